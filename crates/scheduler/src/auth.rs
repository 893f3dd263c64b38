//! The front door: a tower layer in front of every gRPC service of the node (outside the forwarding layer), so
//! every call is authenticated and authorized on the node that receives it, before it is answered or relayed.
//! What each RPC requires is one table, [`access`]; who a token is, [`resolve`]; whether that may be done, the
//! pure [`aidos_api::auth::authorize`]. Tokens and roles are described in `aidos_api::auth`.
//!
//! Invariants:
//! - Deny by default: a path with no entry in [`access`] is refused for everyone (PERMISSION_DENIED naming the
//!   missing rule); the tests enumerate every method of every service from the proto descriptors, so a new RPC
//!   without a rule fails them.
//! - Every node decides from its own applied state: a revocation takes effect on a node as soon as it has
//!   applied it (replication, milliseconds in a healthy cluster). A relayed call is checked again by the leader
//!   (the relay keeps its headers).
//! - A refused call changes nothing: it never reaches a service.
//! - A verified call is then admitted by its token's limits (`crate::limits`); the root token is exempt (the
//!   operator's break-glass key, which scheduler nodes also use for Raft).
//! - The verified [`Principal`] travels to the services in the request's extensions (finer checks, such as the
//!   permission to submit `process` jobs, are made there with [`principal`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aidos_api::auth::{self, Access, Principal, Unauthenticated};
use aidos_api::v1::{AuditRecord, JobState, Role};
use http_body_util::{BodyExt, Limited};
use tonic::body::Body;
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use crate::core::Core;
use crate::error::SchedulerError;
use crate::limits::Limiter;
use crate::state::ClusterState;

/// Most bytes of a refused call's request read before answering, and how long to wait for them.
const REFUSED_BODY_MAX: usize = 64 << 10;
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The standard gRPC services every node serves beside its own (`grpc.health.v1`, server reflection).
pub const GRPC_STANDARD_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// What `path` (`/package.Service/Method`) requires; `None`: no rule (refused).
pub fn access(path: &str) -> Option<Access> {
    use Access::*;
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    // Load balancers' and Kubernetes' probes, and `grpcurl list`/`describe`, carry no token; `proto/` is the public
    // API anyway, and health says only whether this node knows a leader.
    if GRPC_STANDARD_SERVICES.contains(&service) {
        return Some(Public);
    }
    let service = service.strip_prefix("aidos.v1.")?;
    Some(match (service, method) {
        ("RaftService", "AppendEntries" | "Vote" | "InstallSnapshot") => Peer,
        ("WorkerService", "Register" | "Heartbeat" | "Assignments" | "ReportStatus" | "ReportLogs" | "RenewCert") => {
            Worker
        }
        // A new worker proves itself with its one-time join token (checked by the method).
        ("WorkerService", "Join") => Public,
        ("ClusterService", "Status" | "ListWorkers") => Read,
        ("ClusterService", "AddNode" | "RemoveNode" | "RevokeWorker") => ClusterAdmin,
        ("JobService", "Submit" | "SubmitBatch" | "Cancel" | "JoinRing") => Write,
        ("JobService", "Get" | "List" | "Watch" | "Logs") => Read,
        ("DatasetService", "Commit") => Write,
        ("DatasetService", "List" | "Get") => Read,
        ("RunService", "ReportMetrics" | "RecordCheckpoint") => Write,
        ("RunService", "LatestCheckpoint" | "List" | "Get" | "ListExperiments") => Read,
        ("RunService", "CreateExperiment" | "CreateRun" | "UpdateRun") => Write,
        ("ModelService", "Register" | "SetAlias" | "SetArtifact" | "Create") => Write,
        ("ModelService", "List" | "Get") => Read,
        ("BlobService", "Upload") => BlobWrite,
        ("BlobService", "Download" | "Has") => BlobRead,
        ("ServeService", "Deploy" | "Delete" | "Promote" | "Rollback" | "ReportEndpoint" | "ReportLoad") => Write,
        ("ServeService", "List") => Read,
        // Gateways and replicas; the method itself narrows what a replica's job token may read.
        ("ServeService", "Routes") => Authenticated,
        ("SweepService", "Submit" | "Cancel") => Write,
        ("SweepService", "Get" | "List") => Read,
        // Devices enrol with an enrolment or join token, or their credential (`edge_auth`); then they prove
        // themselves with their credential and, on a TLS node, their device certificate.
        ("EdgeService", "Enroll") => Public,
        ("EdgeService", "Sync" | "Download") => Device,
        ("EdgeService", "Deploy") => Write,
        ("EdgeService", "ListDevices" | "ListEdgeDeployments") => Read,
        ("AuthService", "CreateToken" | "ListTokens" | "RevokeToken") => ProjectAdmin,
        ("AuthService", "WhoAmI") => Authenticated,
        ("AuditService", "List") => ProjectAdmin,
        ("AuditService", "Append") => Peer,
        _ => return None,
    })
}

/// Who the token string `presented` is, at `now_ms`, given the cluster's root token and applied state. Pure.
pub fn resolve(
    presented: &str,
    root_token: &str,
    st: &ClusterState,
    now_ms: i64,
) -> Result<Principal, Unauthenticated> {
    let t = auth::parse_token(presented)?;
    let root = auth::parse_token(root_token).map_err(|_| Unauthenticated::Unknown(t.id.clone()))?;
    if t.id == auth::ROOT_ID {
        return if auth::secrets_equal(&t.secret, &root.secret) {
            Ok(Principal::root())
        } else {
            Err(Unauthenticated::WrongSecret(t.id))
        };
    }
    if t.id.starts_with("job-") {
        let job = st.jobs.by_id.get(&t.id).ok_or_else(|| Unauthenticated::Unknown(t.id.clone()))?;
        if !auth::secrets_equal(&auth::job_secret(&root.secret, &t.id), &t.secret) {
            return Err(Unauthenticated::WrongSecret(t.id));
        }
        if JobState::try_from(job.state).is_ok_and(|s| s.is_terminal()) {
            return Err(Unauthenticated::JobEnded(t.id));
        }
        return Ok(Principal::job(&t.id, crate::queries::job_project(job)));
    }
    let rec = st.auth.tokens.get(&t.id).ok_or_else(|| Unauthenticated::Unknown(t.id.clone()))?;
    if !auth::secret_matches(&t.secret, &rec.secret_hash) {
        return Err(Unauthenticated::WrongSecret(t.id));
    }
    let tok = rec.token.clone().unwrap_or_default();
    if tok.join {
        return Err(Unauthenticated::JoinOnly(t.id));
    }
    if tok.revoked_at_ms != 0 {
        return Err(Unauthenticated::Revoked(t.id));
    }
    if tok.expires_at_ms != 0 && tok.expires_at_ms <= now_ms {
        return Err(Unauthenticated::Expired(t.id));
    }
    Ok(Principal {
        token_id: tok.id,
        name: tok.name,
        role: Role::try_from(tok.role).unwrap_or(Role::Unspecified),
        project: tok.project,
        allow_process: tok.allow_process,
        expires_at_ms: tok.expires_at_ms,
    })
}

/// The name of token `id` for an audit record of a refused call ("" when no token of that id exists).
fn token_name(st: &ClusterState, id: &str) -> String {
    match id {
        auth::ROOT_ID => "root".into(),
        job if job.starts_with("job-") && st.jobs.by_id.contains_key(job) => format!("job:{job}"),
        _ => st.auth.tokens.get(id).and_then(|r| r.token.as_ref()).map(|t| t.name.clone()).unwrap_or_default(),
    }
}

/// The project a call acts in (its `aidos-project` metadata, else the default project).
pub fn project_of(headers: &http::HeaderMap) -> String {
    headers
        .get(auth::PROJECT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .unwrap_or(auth::DEFAULT_PROJECT)
        .to_string()
}

/// The principal the auth layer verified for this call, and the call's project.
pub fn principal<T>(r: &tonic::Request<T>) -> Result<(Principal, String), tonic::Status> {
    r.extensions()
        .get::<Verified>()
        .map(|v| (v.principal.clone(), v.project.clone()))
        .ok_or_else(|| tonic::Status::unauthenticated("the call was not authenticated"))
}

/// Put into a request's extensions by the auth layer.
#[derive(Debug, Clone)]
pub struct Verified {
    pub principal: Principal,
    pub project: String,
    /// The rule the call passed.
    pub access: Access,
}

/// The whole decision for one call: `Ok(None)` for a public method, `Ok(Some(..))` for a verified caller.
/// `not_leader`: what a follower answers instead of "unknown token" (a token created a moment ago may not have
/// reached this node yet: the client follows the hint to the leader, which knows it); None on the leader.
pub fn check(
    path: &str,
    headers: &http::HeaderMap,
    root_token: &str,
    st: &ClusterState,
    now_ms: i64,
    not_leader: Option<tonic::Status>,
) -> Result<Option<Verified>, tonic::Status> {
    let Some(access) = access(path) else {
        return Err(tonic::Status::permission_denied(format!("no access rule for {path}: refused")));
    };
    check_access(access, headers, root_token, st, now_ms, not_leader)
}

/// [`check`] for a call whose rule is already known (the HTTP API's routes name theirs).
pub fn check_access(
    access: Access,
    headers: &http::HeaderMap,
    root_token: &str,
    st: &ClusterState,
    now_ms: i64,
    not_leader: Option<tonic::Status>,
) -> Result<Option<Verified>, tonic::Status> {
    if matches!(access, Access::Public | Access::Device) {
        return Ok(None);
    }
    let presented = match headers.get(auth::AUTHORIZATION) {
        None => return Err(Unauthenticated::Missing.into()),
        Some(v) => v.to_str().map_err(|_| tonic::Status::from(Unauthenticated::Malformed))?,
    };
    let principal = match (resolve(presented, root_token, st, now_ms), not_leader) {
        (Err(Unauthenticated::Unknown(_)), Some(hint)) => return Err(hint),
        (r, _) => r?,
    };
    let project = project_of(headers);
    if project == auth::ALL_PROJECTS {
        return Err(tonic::Status::invalid_argument("aidos-project: `*` names every project; a call acts in one"));
    }
    crate::state::check_name(auth::PROJECT_HEADER, &project).map_err(|r| tonic::Status::invalid_argument(r.message))?;
    auth::authorize(access, &principal, &project)?;
    Ok(Some(Verified { principal, project, access }))
}

/// The name a worker's principal has when its certificate proved who it is (`worker:<id>`).
pub const CERT_WORKER_PREFIX: &str = "worker:";

/// What a node that serves TLS asks of a call's client certificate (already verified against the cluster CA by
/// the TLS handshake), by the call's rule. Pure.
/// - Peer (Raft, audit hand-over): a node's certificate; the token is then checked as on any call.
/// - Worker (the worker channel): a worker certificate this cluster issued and has not revoked. It is the call's
///   principal: no token is needed, and a worker token alone is refused.
/// - Device (an edge agent's sync and download): the device certificate its latest enrolment was given, or a
///   node's certificate on a call that node relays; the device it proved is what [`DEVICE_HEADER`] names.
/// - Any other rule: a valid worker certificate on a call without a token is the worker's credential (its blob
///   cache fills through the blob service); otherwise users, jobs and services present tokens over
///   server-authenticated TLS and the certificate asks nothing.
///
/// `Ok(Some(..))`: verified by the certificate; `Ok(None)`: go on to the token.
pub fn check_cert(
    path: &str,
    headers: &http::HeaderMap,
    cert: Option<&aidos_api::tls::PeerCert>,
    st: &ClusterState,
) -> Result<Option<Verified>, tonic::Status> {
    use aidos_api::tls::Identity;
    let Some(access) = access(path) else { return Ok(None) };
    let needs = |what: &str| {
        tonic::Status::from(Unauthenticated::Certificate(format!(
            "{path} needs {what}: this cluster authenticates its nodes, workers and devices with certificates of its CA"
        )))
    };
    let tokenless = !headers.contains_key(auth::AUTHORIZATION);
    let relayed = headers.contains_key(crate::forward::FORWARDED_HEADER);
    match (access, cert) {
        (Access::Peer, Some(c)) if matches!(c.identity, Identity::Node(_)) => Ok(None),
        (Access::Peer, _) => Err(needs("a scheduler node's certificate")),
        (Access::Public, _) => Ok(None),
        // A peer relays a device's call its own auth layer checked (with the device it names: DEVICE_HEADER).
        (Access::Device, Some(c)) if matches!(c.identity, Identity::Node(_)) && relayed => Ok(None),
        (Access::Device, Some(aidos_api::tls::PeerCert { identity: Identity::Device(name), serial, .. })) => {
            crate::edge_auth::cert_speaks_for(st.edge.devices.get(name), name, serial)
                .map_err(|why| tonic::Status::from(Unauthenticated::Certificate(why)))?;
            let principal = Principal::device(name);
            Ok(Some(Verified { principal, project: auth::DEFAULT_PROJECT.into(), access }))
        }
        (Access::Device, _) => Err(needs(
            "the device's certificate (an agent gets one when it enrols: `aidos edge agent --server-ca CA \
             --join-token T`)",
        )),
        (_, Some(c)) if access == Access::Worker || tokenless => {
            let Identity::Worker(id) = &c.identity else {
                return match access {
                    Access::Worker => Err(needs("a worker certificate")),
                    _ => Ok(None),
                };
            };
            st.auth.cert_valid(&c.serial, id).map_err(|why| tonic::Status::from(Unauthenticated::Certificate(why)))?;
            // The handshake checked the dates, but a connection outlives them: a worker that renewed moved to new
            // connections (`aidos_api::client::Client` drops its channels on rotation), so an expired one is stale.
            if c.not_after_ms != 0 && c.not_after_ms <= aidos_api::now_ms() {
                let why = format!("the certificate of worker {id} expired (this connection was made before)");
                return Err(Unauthenticated::Certificate(why).into());
            }
            let principal = Principal {
                token_id: format!("{CERT_WORKER_PREFIX}{id}"),
                name: format!("{CERT_WORKER_PREFIX}{id}"),
                role: Role::Worker,
                project: auth::ALL_PROJECTS.into(),
                allow_process: false,
                expires_at_ms: c.not_after_ms,
            };
            let project = project_of(headers);
            auth::authorize(access, &principal, &project)?;
            Ok(Some(Verified { principal, project, access }))
        }
        (Access::Worker, _) => {
            Err(needs("a worker certificate (a new worker gets one with a join token: `aidos worker --join-token`)"))
        }
        _ => Ok(None),
    }
}

/// On a node that serves TLS, the device a Sync or Download call proved itself as (set by the auth layer of the
/// node the device called, from its certificate; whatever a client sends under this name is dropped there). The
/// handler checks that the call names this device.
pub const DEVICE_HEADER: &str = "aidos-verified-device";

/// The verified client certificate of a call that came over TLS (None: plain TCP, no certificate, or one that
/// names no aidos identity).
pub fn peer_cert<B>(req: &http::Request<B>) -> Option<aidos_api::tls::PeerCert> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    aidos_api::tls::peer_of(certs.first()?)
}

/// Puts [`Auth`] in front of a node's services.
#[derive(Clone)]
pub struct AuthLayer {
    core: Arc<Core>,
    limiter: Arc<Limiter>,
}

impl AuthLayer {
    pub fn new(core: Arc<Core>, limiter: Arc<Limiter>) -> Self {
        Self { core, limiter }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { core: self.core.clone(), limiter: self.limiter.clone(), inner }
    }
}

/// The service [`AuthLayer`] makes: refuses calls [`check`] refuses, then calls over their token's limits
/// (`crate::limits`), and hands the rest to `inner`.
#[derive(Clone)]
pub struct Auth<S> {
    core: Arc<Core>,
    limiter: Arc<Limiter>,
    inner: S,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

impl<S> Service<Request> for Auth<S>
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

    fn call(&mut self, mut req: Request) -> Self::Future {
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let not_leader = (!self.core.is_leader() && !req.headers().contains_key(crate::forward::FORWARDED_HEADER))
            .then(|| SchedulerError::NotLeader { leader: self.core.leader_addr() }.into());
        let cert = self.core.tls.as_ref().map(|_| peer_cert(&req));
        let verdict = {
            let st = &self.core.state.read().expect("state lock").state;
            let by_cert = match &cert {
                Some(c) => check_cert(req.uri().path(), req.headers(), c.as_ref(), st),
                None => Ok(None),
            };
            match by_cert {
                Ok(None) => check(
                    req.uri().path(),
                    req.headers(),
                    &self.core.cfg.root_token,
                    st,
                    aidos_api::now_ms(),
                    not_leader,
                ),
                decided => decided,
            }
        };
        // The device a call proved itself as is this layer's to say (see DEVICE_HEADER): kept only on a call a peer
        // node relays, else dropped, and set from a device certificate that passed.
        let by_peer = matches!(&cert, Some(Some(c)) if matches!(c.identity, aidos_api::tls::Identity::Node(_)));
        if !(by_peer && req.headers().contains_key(crate::forward::FORWARDED_HEADER)) {
            req.headers_mut().remove(DEVICE_HEADER);
        }
        if let Ok(Some(v)) = &verdict
            && v.access == Access::Device
            && let Some(Ok(name)) = v.principal.name.strip_prefix("device:").map(http::HeaderValue::from_str)
        {
            req.headers_mut().insert(DEVICE_HEADER, name);
        }
        // The audit record of a mutation: who, what, from where; its outcome is filled in below.
        let path = req.uri().path();
        let record = access(path).filter(|a| crate::audit::auditable(path, *a)).map(|_| {
            let token_id = req
                .headers()
                .get(auth::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| auth::parse_token(v).ok())
                .map(|t| t.id)
                .unwrap_or_default();
            // Bounded here, before it waits in the buffer: the header and path are the client's.
            crate::audit::bounded(AuditRecord {
                at_ms: aidos_api::now_ms(),
                token_id,
                project: project_of(req.headers()),
                action: path.to_string(),
                peer: crate::audit::peer_of(&req),
                node: self.core.id,
                via: crate::audit::via_of(&req).to_string(),
                ..Default::default()
            })
        });
        let limited = match &verdict {
            // The root token (the operator's, and the nodes' own) is exempt, as Kubernetes exempts system:masters.
            Ok(Some(v)) if !v.principal.is_root() => self
                .limiter
                .admit(&v.principal.token_id)
                .map_err(|r| (r.status(&v.principal.token_id, self.limiter.config()), self.limiter.hold(&r))),
            _ => Ok(None),
        };
        match (verdict, limited) {
            (Ok(v), Ok(permit)) => {
                // Executed here (not relayed on): recorded here, with the answer's code. A relayed call is the
                // leader's to record.
                let policy = crate::forward::policy(req.uri().path());
                let relayed = req.headers().contains_key(crate::forward::FORWARDED_HEADER);
                let me = self.core.id;
                let local = crate::forward::decide(policy, me, self.core.leader_id(), relayed)
                    == crate::forward::Decision::Local;
                let record = record.filter(|_| local).map(|mut r| {
                    if let Some(v) = &v {
                        r.principal = v.principal.name.clone();
                        r.token_id = v.principal.token_id.clone();
                    }
                    r.allowed = true;
                    r
                });
                if let Some(v) = v {
                    req.extensions_mut().insert(v);
                }
                let call = inner.call(req);
                // Recorded when the answer is known, or as `Cancelled` if the caller goes away first (its change
                // may still be applied).
                let mut pending = crate::audit::Pending::new(self.core.clone(), record);
                Box::pin(async move {
                    let answer = call.await;
                    drop(permit);
                    if let Ok(resp) = &answer {
                        pending.finish(crate::audit::code_of(resp));
                    }
                    answer
                })
            }
            (Err(st), _) => {
                // UNAVAILABLE is a redirect to the leader (a token this node has not applied yet), not a refusal.
                if let Some(mut r) = record.filter(|_| st.code() != tonic::Code::Unavailable) {
                    // Named only when the token was verified (refused for what it asked); an unauthenticated call
                    // keeps just the token id it claimed.
                    if st.code() == tonic::Code::PermissionDenied {
                        let state = &self.core.state.read().expect("state lock").state;
                        r.principal = token_name(state, &r.token_id);
                    }
                    r.code = crate::audit::code_name(st.code());
                    r.reason = st.message().to_string();
                    self.core.audit.push(crate::audit::bounded(r));
                }
                Box::pin(refuse(req, st, None))
            }
            (_, Err((st, hold))) => Box::pin(refuse(req, st, hold)),
        }
    }
}

/// Answers a refused call: reads what the client sent first (a unary request is already here; a stream is given a
/// moment), since answering with its request half-open resets the stream and hyper closes a connection after ~1,000
/// such resets (its rapid-reset guard); then, for a call over its limits, waits out the hold (`limits`).
async fn refuse(
    req: Request,
    st: tonic::Status,
    hold: Option<(std::time::Duration, tokio::sync::OwnedSemaphorePermit)>,
) -> Result<Response, Infallible> {
    let body = Limited::new(req.into_body(), REFUSED_BODY_MAX).collect();
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, body).await;
    if let Some((wait, _slot)) = hold {
        tokio::time::sleep(wait).await;
    }
    Ok(st.into_http())
}

#[cfg(test)]
mod tests {
    use aidos_api::v1::{Job, JobSpec, Token, TokenRecordV1};

    use super::*;

    fn headers(token: Option<&str>, project: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert(auth::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        }
        if let Some(p) = project {
            h.insert(auth::PROJECT_HEADER, p.parse().unwrap());
        }
        h
    }

    #[test]
    fn every_rpc_has_a_rule() {
        let methods = aidos_api::every_rpc();
        assert!(methods.len() > 50, "{methods:?}");
        let missing: Vec<_> = methods.iter().filter(|m| access(m).is_none()).collect();
        assert!(missing.is_empty(), "RPCs without an access rule (add them to auth::access): {missing:?}");
        assert_eq!(access("/aidos.v1.JobService/NoSuchMethod"), None);
        assert_eq!(access("/other.Service/Submit"), None);
    }

    fn state_with(tokens: &[(&str, Role, &str, &str, i64, i64)]) -> ClusterState {
        let mut st = ClusterState::default();
        for (id, role, project, secret, expires, revoked) in tokens {
            let token = Token {
                id: id.to_string(),
                name: format!("user-{id}"),
                role: *role as i32,
                project: project.to_string(),
                allow_process: true,
                expires_at_ms: *expires,
                revoked_at_ms: *revoked,
                ..Default::default()
            };
            let rec = TokenRecordV1 { token: Some(token), secret_hash: auth::hash_secret(secret).to_vec() };
            st.auth.tokens.insert(id.to_string(), rec);
        }
        st
    }

    #[test]
    fn certificates_on_a_tls_node() {
        use aidos_api::tls::{Identity, PeerCert};
        use tonic::Code::{PermissionDenied, Unauthenticated};
        let mut st = ClusterState::default();
        for (serial, revoked) in [("aa", 0), ("bb", 5)] {
            let c = aidos_api::v1::WorkerCert {
                serial: serial.into(),
                worker_id: "w1".into(),
                revoked_at_ms: revoked,
                ..Default::default()
            };
            st.auth.worker_certs.insert(serial.into(), c);
        }
        let cam = aidos_api::v1::EdgeDevice { name: "cam".into(), cert_serial: "d1".into(), ..Default::default() };
        st.edge.devices.insert("cam".into(), cam);
        let cert =
            |identity, serial: &str| PeerCert { identity, serial: serial.into(), not_before_ms: 0, not_after_ms: 0 };
        let (node, w1) = (cert(Identity::Node(2), "01"), cert(Identity::Worker("w1".into()), "aa"));
        let revoked = cert(Identity::Worker("w1".into()), "bb");
        let unknown = cert(Identity::Worker("w1".into()), "cc");
        let root = headers(Some(&auth::new_root_token()), None);
        let none = headers(None, None);
        let code = |path: &str, h: &http::HeaderMap, c: Option<&PeerCert>| match check_cert(path, h, c, &st) {
            Ok(None) => None,
            Ok(Some(v)) => Some(Ok(v.principal.name)),
            Err(s) => Some(Err(s.code())),
        };
        let (vote, beat) = ("/aidos.v1.RaftService/Vote", "/aidos.v1.WorkerService/Heartbeat");
        assert_eq!(code(vote, &root, Some(&node)), None, "a node: on to the root token");
        assert_eq!(code(vote, &root, None), Some(Err(Unauthenticated)));
        assert_eq!(code(vote, &root, Some(&w1)), Some(Err(Unauthenticated)), "a worker is no node");
        assert_eq!(code(beat, &root, Some(&w1)), Some(Ok("worker:w1".into())), "the certificate decides");
        assert_eq!(code(beat, &root, None), Some(Err(Unauthenticated)), "a token alone is refused");
        assert_eq!(code(beat, &none, Some(&revoked)), Some(Err(Unauthenticated)));
        assert_eq!(code(beat, &none, Some(&unknown)), Some(Err(Unauthenticated)));
        assert_eq!(code(beat, &none, Some(&node)), Some(Err(Unauthenticated)));
        // Elsewhere a worker certificate stands in for a missing token, with a worker's rights only.
        let download = "/aidos.v1.BlobService/Download";
        assert_eq!(code(download, &none, Some(&w1)), Some(Ok("worker:w1".into())));
        assert_eq!(code(download, &root, Some(&w1)), None, "a token was presented: it decides");
        assert_eq!(code("/aidos.v1.JobService/Submit", &none, Some(&w1)), Some(Err(PermissionDenied)));
        assert_eq!(code("/aidos.v1.JobService/Submit", &none, None), None, "no certificate: the token rule");
        assert_eq!(code("/aidos.v1.WorkerService/Join", &none, None), None, "join: its token is in the request");
        // A device's calls: its current certificate, or a node relaying them; nothing else.
        let sync = "/aidos.v1.EdgeService/Sync";
        let device = |serial: &str| cert(Identity::Device("cam".into()), serial);
        assert_eq!(code(sync, &none, Some(&device("d1"))), Some(Ok("device:cam".into())));
        assert_eq!(code(sync, &none, Some(&device("d0"))), Some(Err(Unauthenticated)), "a renewed one");
        let other = cert(Identity::Device("cam2".into()), "d1");
        assert_eq!(code(sync, &none, Some(&other)), Some(Err(Unauthenticated)), "not enrolled");
        assert_eq!(code(sync, &none, None), Some(Err(Unauthenticated)), "a credential alone is not enough");
        assert_eq!(code(sync, &none, Some(&w1)), Some(Err(Unauthenticated)), "a worker is no device");
        assert_eq!(code(sync, &none, Some(&node)), Some(Err(Unauthenticated)), "a node that did not relay it");
        let mut relayed = none.clone();
        relayed.insert(crate::forward::FORWARDED_HEADER, http::HeaderValue::from(1));
        assert_eq!(code(sync, &relayed, Some(&node)), None, "relayed by a node that checked it");
        assert_eq!(code(sync, &relayed, Some(&device("d0"))), Some(Err(Unauthenticated)));
        assert_eq!(code("/aidos.v1.EdgeService/Enroll", &none, None), None, "enrol: tokens are in the request");
    }

    #[test]
    fn resolve_and_check() {
        let root = auth::new_root_token();
        let s = auth::new_secret();
        let st = state_with(&[
            ("tm", Role::Member, "a", &s, 0, 0),
            ("tv", Role::Viewer, "a", &s, 0, 0),
            ("tx", Role::Member, "a", &s, 100, 0),
            ("tr", Role::Member, "a", &s, 0, 50),
        ]);
        let tok = |id: &str| auth::format_token(id, &s);
        let code = |path: &str, t: Option<&str>, p: Option<&str>| {
            check(path, &headers(t, p), &root, &st, 1000, None).err().map(|e| e.code())
        };
        use tonic::Code::*;
        let submit = "/aidos.v1.JobService/Submit";
        let list = "/aidos.v1.JobService/List";
        assert_eq!(code(submit, None, None), Some(Unauthenticated));
        assert_eq!(code(submit, Some("garbage"), None), Some(Unauthenticated));
        assert_eq!(code(submit, Some(&tok("tx")), Some("a")), Some(Unauthenticated), "expired");
        assert_eq!(code(submit, Some(&tok("tr")), Some("a")), Some(Unauthenticated), "revoked");
        assert_eq!(code(submit, Some(&tok("nope")), Some("a")), Some(Unauthenticated), "unknown");
        assert_eq!(
            code(submit, Some(&auth::format_token("tm", &auth::new_secret())), Some("a")),
            Some(Unauthenticated)
        );
        assert_eq!(code(submit, Some(&tok("tm")), Some("a")), None);
        assert_eq!(code(submit, Some(&tok("tm")), Some("b")), Some(PermissionDenied), "another project");
        assert_eq!(code(submit, Some(&tok("tm")), None), Some(PermissionDenied), "the default project is another");
        assert_eq!(code(submit, Some(&tok("tv")), Some("a")), Some(PermissionDenied), "a viewer writes");
        assert_eq!(code(list, Some(&tok("tv")), Some("a")), None);
        assert_eq!(code(submit, Some(&root), Some("anything")), None);
        assert_eq!(code("/aidos.v1.RaftService/Vote", Some(&tok("tm")), Some("a")), Some(PermissionDenied));
        assert_eq!(code("/aidos.v1.EdgeService/Sync", None, None), None, "devices sign their own calls");
        assert_eq!(code("/aidos.v1.JobService/Nope", Some(&root), None), Some(PermissionDenied));
        let v = check(list, &headers(Some(&tok("tv")), Some("a")), &root, &st, 1000, None).unwrap().unwrap();
        assert_eq!((v.principal.role, v.project.as_str()), (Role::Viewer, "a"));
        assert_eq!(code(list, Some(&tok("tv")), Some("*")), Some(InvalidArgument), "a call acts in one project");
        assert_eq!(code(list, Some(&tok("tv")), Some("a b")), Some(InvalidArgument));
        // A follower that does not know a token yet points at the leader instead of refusing it.
        let hint = tonic::Status::unavailable("not the leader");
        let h = headers(Some(&tok("new")), Some("a"));
        assert_eq!(check(list, &h, &root, &st, 1000, Some(hint.clone())).unwrap_err().code(), Unavailable);
        let revoked = headers(Some(&tok("tr")), Some("a"));
        assert_eq!(check(list, &revoked, &root, &st, 1000, Some(hint)).unwrap_err().code(), Unauthenticated);
    }

    #[test]
    fn job_tokens_live_as_long_as_their_job() {
        let root = auth::new_root_token();
        let root_secret = auth::parse_token(&root).unwrap().secret;
        let mut st = ClusterState::default();
        st.jobs
            .by_id
            .insert("job-1".into(), Job { id: "job-1".into(), state: JobState::Running as i32, ..Default::default() });
        let t = auth::job_token(&root_secret, "job-1");
        assert_eq!(resolve(&t, &root, &st, 0).unwrap(), Principal::job("job-1", auth::DEFAULT_PROJECT));
        let mut in_a = st.clone();
        in_a.jobs.by_id.get_mut("job-1").unwrap().spec = Some(JobSpec { project: "a".into(), ..Default::default() });
        assert_eq!(resolve(&t, &root, &in_a, 0).unwrap().project, "a", "a job token acts in its job's project");
        assert!(matches!(
            resolve(&auth::job_token("other", "job-1"), &root, &st, 0),
            Err(Unauthenticated::WrongSecret(_))
        ));
        assert!(matches!(
            resolve(&auth::job_token(&root_secret, "job-2"), &root, &st, 0),
            Err(Unauthenticated::Unknown(_))
        ));
        st.jobs.by_id.get_mut("job-1").unwrap().state = JobState::Succeeded as i32;
        assert_eq!(resolve(&t, &root, &st, 0), Err(Unauthenticated::JobEnded("job-1".into())));
    }
}
