//! The scheduler's HTTP API and dashboard, on a listener of its own (`SchedulerConfig::http`; `aidos up` serves it
//! on 127.0.0.1:7080). Documented for users in `docs/http-api.md`.
//!
//! The JSON API is the gRPC API in JSON, not a second implementation: every route builds the gRPC request, sends it
//! in process through the node's own gRPC stack (the auth layer, then the forwarding layer, then the service: the
//! same tokens, project scoping, limits and leader routing as a gRPC client gets) and answers the response message
//! in the protobuf JSON mapping (camelCase fields, enums by name, 64-bit integers as strings; `pbjson`). gRPC status
//! codes become HTTP statuses in [`http_status`], the one place that maps them.
//!
//! A caller presents its token as `Authorization: Bearer ...` and, optionally, `aidos-project: NAME`, exactly as on
//! gRPC. The dashboard (`/`, embedded from `dashboard/dist`) is public: it holds no data, and asks for a token.
//!
//! Limits: a list of jobs is one page (`limit`, at most [`MAX_PAGE`]); a log read returns at most [`MAX_LOG_READ`]
//! bytes; request bodies are JSON of at most 64 KiB (axum's default is 2 MiB).

use std::sync::Arc;

use aidos_api::auth::Access;
use aidos_api::v1::*;
use aidos_api::{
    audit_service_client::AuditServiceClient, auth_service_client::AuthServiceClient,
    blob_service_client::BlobServiceClient, dataset_service_client::DatasetServiceClient,
};
use aidos_api::{
    cluster_service_client::ClusterServiceClient, edge_service_client::EdgeServiceClient,
    job_service_client::JobServiceClient, model_service_client::ModelServiceClient,
    run_service_client::RunServiceClient, serve_service_client::ServeServiceClient,
    sweep_service_client::SweepServiceClient,
};
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::Core;
use crate::queries;
use crate::state::ClusterState;
use crate::state::serving::canary_generation;

/// The node's gRPC stack, called in process: the auth layer, then the forwarding layer, then the services.
pub type InProcess = crate::auth::Auth<crate::forward::Forward<tonic::service::Routes>>;

/// Largest answer an in-process call may return (tonic's default of 4 MiB is less than a run at its point limit,
/// ~6 MB, or a large list): the same as the CLI's.
pub const MAX_IN_PROCESS_MESSAGE: usize = 256 << 20;
/// A tonic client of `$client` over the in-process stack `$grpc`, decoding answers up to
/// [`MAX_IN_PROCESS_MESSAGE`].
macro_rules! client {
    ($client:ident, $grpc:expr) => {
        $client::new($grpc).max_decoding_message_size($crate::http::MAX_IN_PROCESS_MESSAGE)
    };
}
pub(crate) use client;

/// Most jobs one page of `GET /v1/jobs` holds (and its default: [`DEFAULT_PAGE`]).
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 50;
/// Most bytes of logs one `GET /v1/jobs/{id}/logs` returns.
pub const MAX_LOG_READ: usize = 1 << 20;

#[derive(Clone)]
struct Api {
    core: Arc<Core>,
    grpc: InProcess,
}

/// The API's and the dashboard's routes.
pub fn router(core: Arc<Core>, grpc: InProcess) -> Router {
    Router::new()
        .route("/v1/http_sd", get(http_sd))
        .route("/v1/whoami", get(whoami))
        .route("/v1/cluster", get(cluster))
        .route("/v1/workers", get(workers))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/logs", get(job_logs))
        .route("/v1/experiments", get(list_experiments))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/datasets", get(list_datasets))
        .route("/v1/datasets/{name}", get(get_dataset))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}", get(get_model))
        .route("/v1/models/{name}/aliases", post(set_alias))
        .route("/v1/models/{name}/evaluation", get(model_evaluation))
        .route("/v1/deployments", get(list_deployments))
        .route("/v1/deployments/{name}/scale", post(scale_deployment))
        .route("/v1/deployments/{name}/metrics", get(deployment_metrics))
        .route("/v1/sweeps", get(list_sweeps))
        .route("/v1/sweeps/{id}", get(get_sweep))
        .route("/v1/sweeps/{id}/cancel", post(cancel_sweep))
        .route("/v1/edge/devices", get(edge_devices))
        .route("/v1/edge/deployments", get(edge_deployments))
        .route("/v1/audit", get(audit))
        .route("/v1/{*rest}", get(no_route).post(no_route))
        .fallback(crate::dashboard::serve)
        .layer(DefaultBodyLimit::max(64 << 10))
        .with_state(Api { core, grpc: grpc.clone() })
        .merge(crate::mlflow::router(grpc))
        .layer(axum::middleware::from_fn(stamp_peer))
}

/// Puts the client's address in the request's [`crate::audit::PEER_HEADER`] (replacing whatever the client sent):
/// the in-process gRPC call carries it to the audit log, which trusts it only on in-process calls.
async fn stamp_peer(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .and_then(|c| HeaderValue::from_str(&c.0.to_string()).ok());
    match peer {
        Some(p) => req.headers_mut().insert(crate::audit::PEER_HEADER, p),
        None => req.headers_mut().remove(crate::audit::PEER_HEADER),
    };
    next.run(req).await
}

/// Serves [`router`] on `listener` (over TLS with `tls`) until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    core: Arc<Core>,
    grpc: InProcess,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    let shutdown = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    let app = router(core, grpc).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let served = match tls {
        Some(t) => match aidos_api::tls::TlsListener::new(listener, t) {
            Ok(l) => {
                use axum::serve::ListenerExt as _;
                // tap_io: axum gives a TapIo listener (not ours) the peer address as ConnectInfo<SocketAddr>.
                axum::serve(l.tap_io(|_| {}), app).with_graceful_shutdown(shutdown).await
            }
            Err(e) => Err(e),
        },
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    };
    if let Err(e) = served {
        tracing::error!(?addr, "HTTP API: {e}");
    }
}

// ---- the one mapping from gRPC outcomes to HTTP ----------------------------------------------------------------

/// The HTTP status of a gRPC status code. Exhaustive: a new code fails to compile here.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        InvalidArgument | OutOfRange | FailedPrecondition => StatusCode::BAD_REQUEST,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Cancelled => StatusCode::from_u16(499).expect("valid code"),
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer: `{"error": message, "code": "NOT_FOUND"}`, with `Retry-After` when the status carries one.
fn refusal(s: &tonic::Status) -> Response {
    let code = format!("{:?}", s.code());
    let mut r = (http_status(s.code()), axum::Json(json!({"error": s.message(), "code": code}))).into_response();
    if let Some(v) = s.metadata().get("retry-after").and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn bad_request(msg: impl Into<String>) -> Response {
    refusal(&tonic::Status::invalid_argument(msg.into()))
}

/// The answer to a call: the message as JSON, or its refusal.
fn answer<T: Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Response {
    match r {
        Ok(m) => axum::Json(m.into_inner()).into_response(),
        Err(s) => refusal(&s),
    }
}

/// `msg` as a gRPC request carrying the caller's credentials and project.
pub(crate) fn request<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    for name in [aidos_api::auth::AUTHORIZATION, aidos_api::auth::PROJECT_HEADER, crate::audit::PEER_HEADER] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
            r.metadata_mut().insert(name, v);
        }
    }
    r
}

/// A query string as `T`, refused in the API's error shape (`query: ...`, 400).
struct Q<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Q(q)),
            Err(e) => Err(bad_request(format!("query: {}", e.body_text()))),
        }
    }
}

/// A JSON request body as `T`, refused in the API's error shape (`body: ...`, 400).
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Response;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(b)) => Ok(Body(b)),
            Err(e) => Err(bad_request(format!("body: {}", e.body_text()))),
        }
    }
}

async fn no_route() -> Response {
    refusal(&tonic::Status::not_found("no such API route (see docs/http-api.md)"))
}

// ---- cluster ---------------------------------------------------------------------------------------------------

async fn whoami(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(AuthServiceClient, a.grpc).who_am_i(request(&h, WhoAmIRequest {})).await)
}

async fn cluster(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(ClusterServiceClient, a.grpc).status(request(&h, ClusterStatusRequest {})).await)
}

async fn workers(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(ClusterServiceClient, a.grpc).list_workers(request(&h, ListWorkersRequest {})).await)
}

// ---- jobs ------------------------------------------------------------------------------------------------------

/// `GET /v1/jobs?state=running,failed&kind=train&name=PREFIX&label=k=v&limit=50&page_token=T`: `state` and `kind`
/// take names with or without their prefix (`running`, `JOB_STATE_RUNNING`), comma-separated or repeated; `label`
/// repeats.
async fn list_jobs(State(a): State<Api>, h: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let req = match jobs_request(q.as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    answer(client!(JobServiceClient, a.grpc).list(request(&h, req)).await)
}

/// The [`ListJobsRequest`] of a query string. Pure.
pub fn jobs_request(query: &str) -> Result<ListJobsRequest, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| format!("query: {e}"))?;
    let mut r = ListJobsRequest { limit: DEFAULT_PAGE, ..Default::default() };
    for (k, v) in pairs {
        match k.as_str() {
            "state" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    let name = format!("JOB_STATE_{}", s.trim_start_matches("JOB_STATE_").to_ascii_uppercase());
                    let st = JobState::from_str_name(&name).ok_or(format!("state {s:?}: no such job state"))?;
                    r.states.push(st as i32);
                }
            }
            "kind" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    let name = format!("JOB_KIND_{}", s.trim_start_matches("JOB_KIND_").to_ascii_uppercase());
                    let kind = JobKind::from_str_name(&name).ok_or(format!("kind {s:?}: no such job kind"))?;
                    r.kinds.push(kind as i32);
                }
            }
            "name" => r.name_prefix = v,
            "label" => {
                let (lk, lv) = v.split_once('=').ok_or(format!("label {v:?}: expected KEY=VALUE"))?;
                r.labels.insert(lk.to_string(), lv.to_string());
            }
            "limit" => {
                r.limit = v.parse().map_err(|_| format!("limit {v:?}: not a number"))?;
                if r.limit == 0 || r.limit > MAX_PAGE {
                    return Err(format!("limit {v}: 1 to {MAX_PAGE}"));
                }
            }
            "page_token" => r.page_token = v,
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok(r)
}

async fn get_job(State(a): State<Api>, h: HeaderMap, Path(id): Path<String>) -> Response {
    answer(client!(JobServiceClient, a.grpc).get(request(&h, GetJobRequest { job_id: id })).await)
}

async fn cancel_job(State(a): State<Api>, h: HeaderMap, Path(id): Path<String>) -> Response {
    answer(client!(JobServiceClient, a.grpc).cancel(request(&h, CancelJobRequest { job_id: id })).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    rank: Option<u32>,
    #[serde(default)]
    offset: u64,
}

/// What `GET /v1/jobs/{id}/logs` answers.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogsPage {
    /// The log bytes from `offset` (UTF-8; an invalid sequence shows as U+FFFD).
    pub data: String,
    pub offset: u64,
    /// Where the next read starts (`offset` + the bytes of `data` as stored).
    pub next_offset: u64,
    /// True when the job has ended and every byte up to `next_offset` was returned: nothing more will come.
    pub complete: bool,
}

/// `GET /v1/jobs/{id}/logs?rank=0&offset=N`: the job's output (stdout and stderr interleaved as written) from byte
/// `offset` on, at most [`MAX_LOG_READ`] bytes. The bytes are the rank's attempts one after another (every rank's,
/// rank by rank, without `rank`), so an offset stays valid between reads of one rank while the job runs: a
/// reader polls with the last `nextOffset` to tail the log. The window is cut on the server (`LogsRequest.offset`,
/// `max_bytes`): a read holds at most one page, whatever the log's size.
async fn job_logs(State(a): State<Api>, h: HeaderMap, Path(id): Path<String>, Q(q): Q<LogsQuery>) -> Response {
    let mut jobs = client!(JobServiceClient, a.grpc);
    // The job first: if it had ended and every attempt's output was stored whole before this read began, the read
    // sees all of it (an attempt still being written may have chunks in flight from its worker).
    let job = match jobs.get(request(&h, GetJobRequest { job_id: id.clone() })).await {
        Ok(j) => j.into_inner(),
        Err(s) => return refusal(&s),
    };
    let settled = JobState::try_from(job.state).is_ok_and(|s| s.is_terminal())
        && job
            .tasks
            .iter()
            .filter(|t| q.rank.is_none_or(|r| r == t.rank))
            .flat_map(|t| &t.attempts)
            .all(|a| !a.log_blob.is_empty());
    let req = LogsRequest { job_id: id, follow: false, rank: q.rank, offset: q.offset, max_bytes: MAX_LOG_READ as u64 };
    let mut stream = match jobs.logs(request(&h, req)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let mut bytes = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c.data),
            Ok(None) => break,
            Err(s) => return refusal(&s),
        }
    }
    axum::Json(logs_page(bytes, q.offset, MAX_LOG_READ, settled)).into_response()
}

/// The page of a read that returned `bytes` from `offset` (at most `max`); `settled`: the job has ended and its
/// output is stored whole. A character cut by the window's end is left for the next read. Pure.
pub fn logs_page(mut bytes: Vec<u8>, offset: u64, max: usize, settled: bool) -> LogsPage {
    let at_end = settled && bytes.len() < max;
    if !at_end {
        bytes.truncate(bytes.len() - incomplete_tail(&bytes));
    }
    let next_offset = offset + bytes.len() as u64;
    LogsPage { data: String::from_utf8_lossy(&bytes).into_owned(), offset, next_offset, complete: at_end }
}

/// How many bytes at the end of `b` are the start of a UTF-8 character whose other bytes are missing (0 to 3).
fn incomplete_tail(b: &[u8]) -> usize {
    for k in 1..=3.min(b.len()) {
        let tail = &b[b.len() - k..];
        if tail[0] >= 0xC0 {
            return if std::str::from_utf8(tail).err().is_some_and(|e| e.error_len().is_none()) { k } else { 0 };
        }
        if tail[0] < 0x80 {
            return 0;
        }
    }
    0
}

// ---- runs and the registry -------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    #[serde(default)]
    job_id: String,
    #[serde(default)]
    max_points: u32,
}

async fn list_experiments(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(RunServiceClient, a.grpc).list_experiments(request(&h, ListExperimentsRequest {})).await)
}

/// `GET /v1/runs?job_id=J&max_points=N`: `max_points` downsamples every metric series (`crate::downsample`).
async fn list_runs(State(a): State<Api>, h: HeaderMap, Q(q): Q<RunsQuery>) -> Response {
    let req = ListRunsRequest { job_id: q.job_id, max_points: q.max_points };
    answer(client!(RunServiceClient, a.grpc).list(request(&h, req)).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointsQuery {
    #[serde(default)]
    max_points: u32,
}

async fn get_run(State(a): State<Api>, h: HeaderMap, Path(id): Path<String>, Q(q): Q<PointsQuery>) -> Response {
    answer(
        client!(RunServiceClient, a.grpc)
            .get(request(&h, GetRunRequest { run_id: id, max_points: q.max_points }))
            .await,
    )
}

async fn list_datasets(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(DatasetServiceClient, a.grpc).list(request(&h, ListDatasetsRequest::default())).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    #[serde(default)]
    version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelQuery {
    #[serde(default)]
    version: u32,
    #[serde(default)]
    alias: String,
}

async fn get_dataset(State(a): State<Api>, h: HeaderMap, Path(name): Path<String>, Q(q): Q<VersionQuery>) -> Response {
    answer(client!(DatasetServiceClient, a.grpc).get(request(&h, GetDatasetRequest { name, version: q.version })).await)
}

async fn list_models(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(ModelServiceClient, a.grpc).list(request(&h, ListModelsRequest::default())).await)
}

async fn get_model(State(a): State<Api>, h: HeaderMap, Path(name): Path<String>, Q(q): Q<ModelQuery>) -> Response {
    let req = GetModelRequest { name, version: q.version, alias: q.alias };
    answer(client!(ModelServiceClient, a.grpc).get(request(&h, req)).await)
}

/// Largest evaluation read.
const MAX_EVALUATION_BYTES: usize = 16 << 20;

/// `GET /v1/models/{name}/evaluation?version=N` (or `alias=A`; neither: the latest): the version's evaluation as its
/// training job recorded it (accuracy, loss, per-class statistics, `confusion[true][predicted]`), read from the
/// blob store through the node's BlobService.
async fn model_evaluation(
    State(a): State<Api>,
    h: HeaderMap,
    Path(name): Path<String>,
    Q(q): Q<ModelQuery>,
) -> Response {
    let req = GetModelRequest { name, version: q.version, alias: q.alias };
    let mv = match client!(ModelServiceClient, a.grpc.clone()).get(request(&h, req)).await {
        Ok(m) => m.into_inner(),
        Err(s) => return refusal(&s),
    };
    let Some(blob) = mv.artifacts.get(aidos_api::contract::EVALUATION_ARTIFACT) else {
        return refusal(&tonic::Status::not_found(format!(
            "model {}:{} has no recorded evaluation (a custom program registered it, or an older aidos):              `aidos model eval {}:{} --dataset ...` computes one",
            mv.name, mv.version, mv.name, mv.version
        )));
    };
    let mut blobs = client!(BlobServiceClient, a.grpc);
    let mut stream = match blobs.download(request(&h, BlobDownloadRequest { id: blob.clone(), offset: 0 })).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let mut bytes = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(d)) if bytes.len() + d.data.len() <= MAX_EVALUATION_BYTES => bytes.extend_from_slice(&d.data),
            Ok(Some(_)) => return refusal(&tonic::Status::out_of_range("evaluation larger than 16 MiB")),
            Ok(None) => break,
            Err(s) => return refusal(&s),
        }
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => refusal(&tonic::Status::data_loss(format!("evaluation blob {blob}: not JSON ({e})"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    alias: String,
    version: u32,
}

/// `POST /v1/models/{name}/aliases` with `{"alias": "production", "version": 3}`.
async fn set_alias(State(a): State<Api>, h: HeaderMap, Path(name): Path<String>, Body(b): Body<AliasBody>) -> Response {
    let req = SetAliasRequest { name, alias: b.alias, version: b.version };
    answer(client!(ModelServiceClient, a.grpc).set_alias(request(&h, req)).await)
}

// ---- serving, sweeps, edge -------------------------------------------------------------------------------------

async fn list_deployments(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(ServeServiceClient, a.grpc).list(request(&h, ListDeploymentsRequest::default())).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: u32,
}

/// `POST /v1/deployments/{name}/scale` with `{"replicas": 3}`: the deployment as it is, with another replica count
/// (its replicas keep running: the spec is unchanged). An autoscaled deployment is refused (its bounds decide).
async fn scale_deployment(
    State(a): State<Api>,
    h: HeaderMap,
    Path(name): Path<String>,
    Body(b): Body<ScaleBody>,
) -> Response {
    let mut serve = client!(ServeServiceClient, a.grpc);
    let d = match deployment(&mut serve, &h, &name).await {
        Ok(d) => d,
        Err(s) => return refusal(&s),
    };
    match scale_request(&d, b.replicas) {
        Ok(req) => answer(serve.deploy(request(&h, req)).await),
        Err(e) => refusal(&tonic::Status::failed_precondition(e)),
    }
}

/// Deployment `name` as the caller may see it (NOT_FOUND when there is none).
async fn deployment(
    serve: &mut ServeServiceClient<InProcess>,
    h: &HeaderMap,
    name: &str,
) -> Result<Deployment, tonic::Status> {
    let list = serve.list(request(h, ListDeploymentsRequest { name: name.to_string() })).await?.into_inner();
    let found = list.deployments.into_iter().find(|d| d.name == name);
    found.ok_or_else(|| tonic::Status::not_found(format!("deployment {name} not found")))
}

/// The [`DeployRequest`] that gives `d` `replicas` replicas and changes nothing else. Pure.
pub fn scale_request(d: &Deployment, replicas: u32) -> Result<DeployRequest, String> {
    if let Some(s) = d.autoscale.as_ref().filter(|s| s.max_replicas > 0) {
        return Err(format!(
            "deployment {} is autoscaled between {} and {} replicas: change its bounds with `aidos serve deploy`",
            d.name, s.min_replicas, s.max_replicas
        ));
    }
    if replicas == 0 {
        return Err("replicas: at least 1".into());
    }
    let spec = d.spec.clone().unwrap_or_default();
    Ok(DeployRequest {
        name: d.name.clone(),
        model: format!("{}:{}", spec.model, spec.version),
        replicas,
        runtime: spec.runtime,
        max_batch: spec.max_batch,
        max_delay_us: spec.max_delay_us,
        instances: spec.instances,
        max_queue: spec.max_queue,
        resources: d.resources,
        public: d.public,
        ..Default::default()
    })
}

/// `GET /v1/deployments/{name}/metrics`: every ready replica's serving counters, scraped now
/// (`crate::replica_metrics`): `{"timeMs": ..., "replicas": [{"jobId", "success", "failure", "rejected",
/// "secondsSum", "secondsCount", "buckets", "error"}]}`. Cumulative: rates come from two reads.
async fn deployment_metrics(State(a): State<Api>, h: HeaderMap, Path(name): Path<String>) -> Response {
    let d = match deployment(&mut client!(ServeServiceClient, a.grpc), &h, &name).await {
        Ok(d) => d,
        Err(s) => return refusal(&s),
    };
    let ready = d.replica_status.into_iter().filter(|r| r.ready && !r.http.is_empty()).map(|r| (r.job_id, r.http));
    let replicas = crate::replica_metrics::scrape_all(ready.collect()).await;
    axum::Json(json!({"timeMs": aidos_api::now_ms(), "replicas": replicas})).into_response()
}

async fn list_sweeps(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(SweepServiceClient, a.grpc).list(request(&h, ListSweepsRequest {})).await)
}

async fn get_sweep(State(a): State<Api>, h: HeaderMap, Path(id): Path<String>) -> Response {
    answer(client!(SweepServiceClient, a.grpc).get(request(&h, GetSweepRequest { sweep_id: id })).await)
}

async fn cancel_sweep(State(a): State<Api>, h: HeaderMap, Path(id): Path<String>) -> Response {
    answer(client!(SweepServiceClient, a.grpc).cancel(request(&h, CancelSweepRequest { sweep_id: id })).await)
}

async fn edge_devices(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(EdgeServiceClient, a.grpc).list_devices(request(&h, ListDevicesRequest::default())).await)
}

/// `GET /v1/audit?user=&project=&action=&since_ms=&until_ms=&denied_only=&limit=`: the audit log, newest first
/// (`AuditService.List`: a project's admins, their project; cluster-wide admins, every project).
async fn audit(State(a): State<Api>, h: HeaderMap, Q(q): Q<AuditQuery>) -> Response {
    let req = ListAuditRequest {
        user: q.user.unwrap_or_default(),
        project: q.project.unwrap_or_default(),
        action: q.action.unwrap_or_default(),
        since_ms: q.since_ms.unwrap_or(0),
        until_ms: q.until_ms.unwrap_or(0),
        denied_only: q.denied_only.unwrap_or(false),
        limit: q.limit.unwrap_or(0),
    };
    answer(client!(AuditServiceClient, a.grpc).list(request(&h, req)).await)
}

#[derive(Deserialize)]
struct AuditQuery {
    user: Option<String>,
    project: Option<String>,
    action: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    denied_only: Option<bool>,
    limit: Option<u32>,
}

async fn edge_deployments(State(a): State<Api>, h: HeaderMap) -> Response {
    answer(client!(EdgeServiceClient, a.grpc).list_edge_deployments(request(&h, ListEdgeDeploymentsRequest {})).await)
}

// ---- Prometheus service discovery ------------------------------------------------------------------------------

/// `GET /v1/http_sd`: Prometheus HTTP service discovery (`http_sd_configs`): one target group per ready serving
/// replica of the call's project, its HTTP address (where `/metrics` is) with labels `deployment`, `version`, `generation`, `replica`
/// (the job), `worker` and `canary`. Answered from this node's applied state (a follower may lag the leader by a
/// heartbeat); Read access; Prometheus presents the token with `authorization: {credentials: ...}`.
async fn http_sd(State(a): State<Api>, headers: HeaderMap) -> Response {
    let project = crate::auth::project_of(&headers);
    read(&a.core, &headers, Access::Read, |st| {
        let mut deployments = queries::deployment_views(st, "");
        deployments.retain(|d| queries::deployment_project(d) == project);
        Value::Array(targets(&deployments))
    })
}

/// Checks the caller against `access`, then answers `f` of the applied state.
fn read(core: &Core, headers: &HeaderMap, access: Access, f: impl FnOnce(&ClusterState) -> Value) -> Response {
    let st = &core.state.read().expect("state lock").state;
    match crate::auth::check_access(access, headers, &core.cfg.root_token, st, aidos_api::now_ms(), None) {
        Ok(_) => axum::Json(f(st)).into_response(),
        Err(s) => refusal(&s),
    }
}

/// The target groups of [`http_sd`]. Pure.
pub fn targets(deployments: &[Deployment]) -> Vec<Value> {
    let mut out = Vec::new();
    for d in deployments {
        let canary = canary_generation(d);
        for r in d.replica_status.iter().filter(|r| r.ready && !r.http.is_empty()) {
            out.push(json!({
                "targets": [r.http],
                "labels": {
                    "deployment": d.name,
                    "version": r.version.to_string(),
                    "generation": r.generation.to_string(),
                    "replica": r.job_id,
                    "worker": r.worker_id,
                    "canary": (Some(r.generation) == canary).to_string(),
                },
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use aidos_api::v1::{Autoscale, Canary, Replica, ServeSpec};

    use super::*;

    #[test]
    fn only_ready_replicas_are_targets_labelled_with_where_they_belong() {
        let rep = |job: &str, g: u64, ready: bool, http: &str| Replica {
            job_id: job.into(),
            generation: g,
            version: g as u32,
            ready,
            http: http.into(),
            worker_id: "w1".into(),
            ..Default::default()
        };
        let d = Deployment {
            name: "mnist".into(),
            generation: 1,
            canary: Some(Canary {
                spec: Some(ServeSpec { version: 2, generation: 2, ..Default::default() }),
                ..Default::default()
            }),
            replica_status: vec![
                rep("job-1", 1, true, "10.0.0.1:80"),
                rep("job-2", 1, false, ""),
                rep("job-3", 2, true, "10.0.0.2:80"),
            ],
            ..Default::default()
        };
        let t = targets(&[d]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["targets"], json!(["10.0.0.1:80"]));
        assert_eq!(t[0]["labels"]["deployment"], "mnist");
        assert_eq!(t[0]["labels"]["canary"], "false");
        assert_eq!(t[1]["labels"]["replica"], "job-3");
        assert_eq!(t[1]["labels"]["canary"], "true");
        assert_eq!(t[1]["labels"]["version"], "2");
    }

    #[test]
    fn job_queries_parse_names_with_or_without_prefix_and_refuse_the_unknown() {
        let r = jobs_request("state=running,JOB_STATE_FAILED&kind=train&label=team=a&label=x=y&limit=10").unwrap();
        assert_eq!(r.states, vec![JobState::Running as i32, JobState::Failed as i32]);
        assert_eq!(r.kinds, vec![JobKind::Train as i32]);
        assert_eq!(r.labels.len(), 2);
        assert_eq!(r.limit, 10);
        assert_eq!(jobs_request("").unwrap().limit, DEFAULT_PAGE);
        for bad in ["state=sleeping", "kind=dance", "label=novalue", "limit=0", "limit=5000", "limit=x", "colour=red"] {
            assert!(jobs_request(bad).is_err(), "{bad} accepted");
        }
        assert!(jobs_request("state=sleeping").unwrap_err().contains("sleeping"));
    }

    #[test]
    fn log_pages_end_only_when_the_job_has_settled_and_the_window_was_not_full() {
        let p = logs_page(b"first\nsecond\n".to_vec(), 0, 1 << 20, false);
        assert_eq!((p.data.as_str(), p.next_offset, p.complete), ("first\nsecond\n", 13, false));
        let p = logs_page(b"more\n".to_vec(), 13, 1 << 20, true);
        assert_eq!((p.next_offset, p.complete), (18, true));
        // A full window is never the end, even of a finished job.
        let p = logs_page(b"12345".to_vec(), 0, 5, true);
        assert_eq!((p.next_offset, p.complete), (5, false));
        // Past the end: nothing, and the offset stays.
        let p = logs_page(Vec::new(), 99, 100, true);
        assert_eq!((p.data.as_str(), p.next_offset, p.complete), ("", 99, true));
    }

    #[test]
    fn a_log_page_never_splits_a_character() {
        let e = "é".as_bytes();
        // The window's end cut `é`: it waits for the next read, which starts at its first byte.
        let p = logs_page([b"a".as_slice(), &e[..1]].concat(), 0, 2, false);
        assert_eq!((p.data.as_str(), p.next_offset), ("a", 1));
        // A running job whose current end is mid-character: the same.
        let p = logs_page([b"ab".as_slice(), &e[..1]].concat(), 0, 100, false);
        assert_eq!((p.data.as_str(), p.next_offset), ("ab", 2));
        // An invalid byte earlier does not stop the trim; a settled log's broken end shows as U+FFFD.
        let p = logs_page([b"\xff".as_slice(), &e[..1]].concat(), 0, 100, false);
        assert_eq!(p.next_offset, 1);
        let p = logs_page([b"ab".as_slice(), &e[..1]].concat(), 0, 100, true);
        assert_eq!((p.data.as_str(), p.next_offset), ("ab\u{fffd}", 3));
        assert_eq!(incomplete_tail("日".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"日".as_bytes()[..2]), 2);
    }

    #[test]
    fn scaling_keeps_the_spec_and_refuses_autoscaled_deployments() {
        let d = Deployment {
            name: "mnist".into(),
            spec: Some(ServeSpec { model: "m".into(), version: 3, runtime: "ort".into(), ..Default::default() }),
            replicas: 1,
            ..Default::default()
        };
        let r = scale_request(&d, 4).unwrap();
        assert_eq!((r.model.as_str(), r.replicas, r.runtime.as_str()), ("m:3", 4, "ort"));
        assert!(scale_request(&d, 0).is_err());
        let auto = Deployment { autoscale: Some(Autoscale { max_replicas: 4, ..Default::default() }), ..d };
        assert!(scale_request(&auto, 2).unwrap_err().contains("autoscaled"));
    }

    #[test]
    fn every_grpc_code_has_an_http_status() {
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(tonic::Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(tonic::Code::Unauthenticated), StatusCode::UNAUTHORIZED);
    }
}
