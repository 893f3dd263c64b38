//! The forwarding path: a tower layer in front of every gRPC service of the node. A client call that the leader
//! must answer, arriving at a follower, is relayed to the leader unchanged (headers, body, streams in both
//! directions) and the leader's answer, status included, comes back as is; so clients see the same answers and
//! errors on every node, and a new RPC needs no forwarding code at all. What is answered where is one table,
//! [`policy`]; the decision is the pure [`decide`].
//!
//! Invariants:
//! - A relayed call carries [`FORWARDED_HEADER`]; a node never relays a call that carries it (a node that was
//!   told it leads but no longer does answers UNAVAILABLE with its idea of the leader, and the client follows),
//!   so a call crosses at most one hop even while two nodes disagree about the leader.
//! - A relay that cannot reach the leader answers UNAVAILABLE (the client retries, here or on another node);
//!   with [`Policy::LeaderOrLocal`] the node answers from its own applied state instead. Such calls are unary and
//!   their request bodies are buffered, bounded by [`MAX_BUFFERED`].
//! - Cancel safety: a client that goes away drops the relay future, which drops the leader call with it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue};
use tower_layer::Layer;
use tower_service::Service;

use aidos_api::client::error_chain;

use crate::core::Core;
use crate::error::SchedulerError;
use crate::raft_types::NodeId;

/// Marks a call relayed by a follower (the value is the relaying node's id).
pub const FORWARDED_HEADER: &str = "aidos-forwarded";
/// Largest request body buffered for a [`Policy::LeaderOrLocal`] call.
pub const MAX_BUFFERED: usize = 1 << 20;

/// Where a method is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// By whichever node receives it (its own view, memory or disk; or leader-only services that refuse with a
    /// hint themselves: the worker protocol, Raft).
    Local,
    /// By the leader: relayed when it arrives elsewhere. The default for every method not listed in [`policy`].
    Leader,
    /// By the leader when it can be reached, else from this node's applied state.
    LeaderOrLocal,
}

/// The routing table, by gRPC path (`/package.Service/Method`).
pub fn policy(path: &str) -> Policy {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", ""));
    match (service, method) {
        (aidos_api::raft_service_server::SERVICE_NAME, _) => Policy::Local,
        // Workers follow the leader's address in the refusal themselves (`LeaderHandler::require`).
        (aidos_api::worker_service_server::SERVICE_NAME, _) => Policy::Local,
        (aidos_api::cluster_service_server::SERVICE_NAME, "Status" | "ListWorkers") => Policy::Local,
        // Every node serves the cluster's blob store (S3 or a shared directory behind each).
        (aidos_api::blob_service_server::SERVICE_NAME, _) => Policy::Local,
        // Any node serves artifact chunks from its blob store, and its replicated view of edge deployments.
        (aidos_api::edge_service_server::SERVICE_NAME, "Download" | "ListEdgeDeployments") => Policy::Local,
        // "Last seen" is the leader's memory; without a leader, the committed reports still answer.
        (aidos_api::edge_service_server::SERVICE_NAME, "ListDevices") => Policy::LeaderOrLocal,
        // Gateways keep learning routes and keys from the applied state while no leader can be reached.
        (aidos_api::serve_service_server::SERVICE_NAME, "Routes") => Policy::LeaderOrLocal,
        // The auth layer of the receiving node verified the caller already.
        (aidos_api::auth_service_server::SERVICE_NAME, "WhoAmI") => Policy::Local,
        // Health and reflection describe the node that answers.
        (s, _) if crate::auth::GRPC_STANDARD_SERVICES.contains(&s) => Policy::Local,
        _ => Policy::Leader,
    }
}

/// What to do with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Hand it to this node's service.
    Local,
    /// Relay it to this node.
    Forward(NodeId),
    /// Answer NotLeader (UNAVAILABLE, with the leader's address when known).
    NotLeader,
}

/// The pure routing decision: `leader` is who this node believes leads, `relayed` whether the call was relayed.
pub fn decide(policy: Policy, me: NodeId, leader: Option<NodeId>, relayed: bool) -> Decision {
    let fallback = if policy == Policy::LeaderOrLocal { Decision::Local } else { Decision::NotLeader };
    match (policy, leader) {
        (Policy::Local, _) => Decision::Local,
        (_, Some(l)) if l == me => Decision::Local,
        (_, Some(l)) if !relayed => Decision::Forward(l),
        _ => fallback,
    }
}

/// Puts [`Forward`] in front of a node's services.
#[derive(Clone)]
pub struct ForwardLayer {
    core: Arc<Core>,
}

impl ForwardLayer {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

impl<S> Layer<S> for ForwardLayer {
    type Service = Forward<S>;
    fn layer(&self, inner: S) -> Forward<S> {
        Forward { core: self.core.clone(), inner }
    }
}

/// The service [`ForwardLayer`] makes: relays leader-bound calls, hands the rest to `inner`.
#[derive(Clone)]
pub struct Forward<S> {
    core: Arc<Core>,
    inner: S,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

impl<S> Service<Request> for Forward<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The inner service was made ready by poll_ready: use it, and leave a clone for the next call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let core = self.core.clone();
        let policy = policy(req.uri().path());
        let relayed = req.headers().contains_key(FORWARDED_HEADER);
        match decide(policy, core.id, core.leader_id(), relayed) {
            Decision::Local => Box::pin(inner.call(req)),
            Decision::NotLeader => {
                let e = SchedulerError::NotLeader { leader: core.leader_addr() };
                Box::pin(async move { Ok(status_response(e.into())) })
            }
            Decision::Forward(leader) if policy == Policy::LeaderOrLocal => Box::pin(async move {
                let (parts, body) = req.into_parts();
                let bytes = match Limited::new(body, MAX_BUFFERED).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return Ok(status_response(tonic::Status::invalid_argument(format!("request: {e}")))),
                };
                let rebuild = |bytes: bytes::Bytes| {
                    let mut r = http::Request::new(Body::new(Full::new(bytes)));
                    *r.method_mut() = parts.method.clone();
                    *r.uri_mut() = parts.uri.clone();
                    *r.version_mut() = parts.version;
                    *r.headers_mut() = parts.headers.clone();
                    r
                };
                match relay(&core, leader, rebuild(bytes.clone())).await {
                    Ok(resp) => Ok(resp),
                    Err(e) => {
                        tracing::debug!("answering locally: {e}");
                        inner.call(rebuild(bytes)).await
                    }
                }
            }),
            Decision::Forward(leader) => {
                Box::pin(
                    async move { Ok(relay(&core, leader, req).await.unwrap_or_else(|e| status_response(e.into()))) },
                )
            }
        }
    }
}

/// Sends a call to the leader over the node's cached channel and returns its answer as it is.
async fn relay(core: &Core, leader: NodeId, mut req: Request) -> Result<Response, SchedulerError> {
    let addr = core.addr_of(leader).ok_or(SchedulerError::NotLeader { leader: None })?;
    let mut channel = core.channel(&addr)?;
    // Who the client is, for the leader's audit record (it sees this node as the peer).
    if let Ok(peer) = HeaderValue::from_str(&crate::audit::peer_of(&req)) {
        req.headers_mut().insert(crate::audit::PEER_HEADER, peer);
    }
    req.headers_mut().insert(FORWARDED_HEADER, HeaderValue::from(core.id));
    let unavailable = |e: tonic::transport::Error| {
        SchedulerError::Unavailable(format!("forwarding to the leader at {addr}: {}", error_chain(&e)))
    };
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(unavailable)?;
    channel.call(req).await.map_err(unavailable)
}

fn status_response(s: tonic::Status) -> Response {
    s.into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table() {
        assert_eq!(policy("/aidos.v1.JobService/Submit"), Policy::Leader);
        assert_eq!(policy("/aidos.v1.SomeNewService/AnyMethod"), Policy::Leader, "new RPCs go to the leader");
        assert_eq!(policy("/aidos.v1.ClusterService/Status"), Policy::Local);
        assert_eq!(policy("/aidos.v1.ClusterService/AddNode"), Policy::Leader);
        assert_eq!(policy("/aidos.v1.WorkerService/Heartbeat"), Policy::Local);
        assert_eq!(policy("/aidos.v1.RaftService/Vote"), Policy::Local);
        assert_eq!(policy("/aidos.v1.EdgeService/Download"), Policy::Local);
        assert_eq!(policy("/aidos.v1.BlobService/Upload"), Policy::Local);
        assert_eq!(policy("/aidos.v1.EdgeService/ListDevices"), Policy::LeaderOrLocal);
        assert_eq!(policy("garbage"), Policy::Leader);
    }

    #[test]
    fn decisions() {
        use Decision::{Forward, NotLeader};
        use Policy::{Leader, LeaderOrLocal};
        assert_eq!(decide(Leader, 1, Some(1), false), Decision::Local, "the leader answers");
        assert_eq!(decide(Leader, 2, Some(1), false), Forward(1));
        assert_eq!(decide(Leader, 2, None, false), NotLeader, "no leader yet: the client retries");
        assert_eq!(decide(Leader, 2, Some(3), true), NotLeader, "never a second hop");
        assert_eq!(decide(Policy::Local, 2, Some(1), false), Decision::Local);
        assert_eq!(decide(LeaderOrLocal, 2, None, false), Decision::Local);
        assert_eq!(decide(LeaderOrLocal, 2, Some(1), false), Forward(1));
        assert_eq!(decide(LeaderOrLocal, 2, Some(3), true), Decision::Local);
    }
}
