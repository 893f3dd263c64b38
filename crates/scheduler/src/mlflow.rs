//! An MLflow-compatible tracking API on the HTTP listener (`/api/2.0/mlflow/...` and the proxied artifact store
//! `/api/2.0/mlflow-artifacts/artifacts/...`), enough that the official `mlflow` client pointed at aidos with
//! `MLFLOW_TRACKING_URI` (and the token in `MLFLOW_TRACKING_TOKEN`) works unchanged for experiments, runs, params,
//! metrics with steps, tags, run status, `search_runs`, metric history, artifacts and registered models/versions.
//!
//! Like the JSON API (`crate::http`), every route is a translation: it calls aidos's own gRPC services in process
//! (same tokens, projects, limits and leader routing) and answers in MLflow's REST shapes (snake_case fields, a
//! run as `{info, data}`, errors as `{error_code, message}`). MLflow runs are aidos runs: they show in `aidos run
//! list` and the dashboard, and a job's runs show to the MLflow client in experiment "0" (Default), read-only.
//!
//! Ids: MLflow run ids allow no `.`, so a job's run `job-3.1` is `job-3_1` here ([`mlflow_run_id`]); runs made here
//! are `ml-<16 hex>` in both. Artifacts are stored as blobs (content-addressed) and listed on the run by path.
//! Registered model versions are aidos model versions whose weights are a manifest of the source's files (format
//! "mlflow"); aidos does not serve them.
//!
//! Limits: one artifact is read into memory, at most [`MAX_ARTIFACT_BYTES`]; other bodies at most
//! [`MAX_REQUEST_BYTES`]; `search_runs` pages hold at most 1000
//! runs; a filter is `AND`-joined comparisons on `metrics.`, `params.`, `tags.` and `attributes.` (status,
//! run_name, start_time, end_time), which covers the client's common use; anything else is refused by name.

use std::collections::BTreeMap;

use aidos_api::v1::*;
use aidos_api::{
    blob_service_client::BlobServiceClient, model_service_client::ModelServiceClient,
    run_service_client::RunServiceClient,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::http::{InProcess, client, request};

/// Largest artifact accepted (it is hashed in memory before it is stored).
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;
/// Largest request body of every other route (a log-batch of MLflow's own maximum, 1,000 metrics, 100 params and
/// 100 tags, is well under it).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// The format recorded in the config of a model version registered through this API.
pub const MLFLOW_FORMAT: &str = "mlflow";

type Grpc = State<InProcess>;

pub fn router(grpc: InProcess) -> Router {
    let api = |p: &str| format!("/api/2.0/mlflow/{p}");
    Router::new()
        .route(&api("experiments/create"), post(create_experiment))
        .route(&api("experiments/get"), get(get_experiment))
        .route(&api("experiments/get-by-name"), get(get_experiment_by_name))
        .route(&api("experiments/search"), get(search_experiments).post(search_experiments))
        .route(&api("runs/create"), post(create_run))
        .route(&api("runs/get"), get(get_run))
        .route(&api("runs/update"), post(update_run))
        .route(&api("runs/log-metric"), post(log_metric))
        .route(&api("runs/log-parameter"), post(log_param))
        .route(&api("runs/set-tag"), post(set_tag))
        .route(&api("runs/delete-tag"), post(delete_tag))
        .route(&api("runs/log-batch"), post(log_batch))
        .route(&api("runs/search"), post(search_runs))
        .route(&api("metrics/get-history"), get(metric_history))
        .route(&api("registered-models/create"), post(create_registered_model))
        .route(&api("registered-models/get"), get(get_registered_model))
        .route(&api("registered-models/search"), get(search_registered_models).post(search_registered_models))
        .route(&api("model-versions/create"), post(create_model_version))
        .route(&api("model-versions/get"), get(get_model_version))
        .route(&api("model-versions/search"), get(search_model_versions).post(search_model_versions))
        // MLflow 3's logged models (`mlflow.<flavor>.log_model`) are not kept: a search finds none, and the client
        // then lists a run's files as files.
        .route(&api("logged-models/search"), post(|| async { axum::Json(json!({"models": []})) }))
        .route("/api/2.0/mlflow-artifacts/artifacts", get(list_artifacts))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .route("/api/2.0/mlflow-artifacts/artifacts/{*path}", get(download_artifact).put(upload_artifact))
        .layer(DefaultBodyLimit::max(MAX_ARTIFACT_BYTES))
        .with_state(grpc)
}

// ---- errors: the one mapping to MLflow's ----------------------------------------------------------------------

/// An MLflow error answer: `{"error_code": ..., "message": ...}` with its HTTP status.
#[derive(Debug)]
pub struct MlflowError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The one mapping from aidos's gRPC statuses to MLflow's error codes. Exhaustive.
impl From<tonic::Status> for MlflowError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        let (status, code) = match s.code() {
            NotFound => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            AlreadyExists => (StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS"),
            InvalidArgument | FailedPrecondition | OutOfRange => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
            Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "REQUEST_LIMIT_EXCEEDED"),
            Unavailable | DeadlineExceeded | Aborted | Cancelled => {
                (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE")
            }
            Unimplemented => (StatusCode::NOT_IMPLEMENTED, "ENDPOINT_NOT_FOUND"),
            Ok | Unknown | Internal | DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        MlflowError { status, code, message: s.message().to_string() }
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error_code": self.code, "message": self.message}))).into_response()
    }
}

fn invalid(msg: impl Into<String>) -> MlflowError {
    tonic::Status::invalid_argument(msg.into()).into()
}

fn not_found(msg: impl Into<String>) -> MlflowError {
    tonic::Status::not_found(msg.into()).into()
}

type Res = Result<Response, MlflowError>;

fn ok(v: Value) -> Res {
    Ok(axum::Json(v).into_response())
}

/// The message of a call, or its refusal.
fn done<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, MlflowError> {
    r.map(tonic::Response::into_inner).map_err(MlflowError::from)
}

/// A JSON body (MLflow's clients send `Content-Type: application/json`, sometimes nothing).
fn body(b: &Bytes) -> Result<Value, MlflowError> {
    if b.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(b).map_err(|e| invalid(format!("body: not JSON ({e})")))
}

/// The query string's parameters (the last of a repeated key wins, except where read with [`all`]).
fn query(q: &Option<String>) -> Result<Vec<(String, String)>, MlflowError> {
    serde_urlencoded::from_str(q.as_deref().unwrap_or("")).map_err(|e| invalid(format!("query: {e}")))
}

fn param(q: &[(String, String)], key: &str) -> Option<String> {
    q.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a str, MlflowError> {
    v[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("missing value for required parameter '{key}'")))
}

/// An integer MLflow may send as a number or as a string (int64 in its JSON).
fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn pairs(v: &Value) -> BTreeMap<String, String> {
    let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .filter_map(|t| Some((t["key"].as_str()?.to_string(), t["value"].as_str().unwrap_or("").to_string())))
        .collect()
}

fn kv(m: &BTreeMap<String, String>) -> Vec<Value> {
    m.iter().map(|(k, v)| json!({"key": k, "value": v})).collect()
}

// ---- ids ---------------------------------------------------------------------------------------------------------

/// The MLflow id of aidos run `id` (`job-3.1` -> `job-3_1`; others unchanged). Pure.
pub fn mlflow_run_id(id: &str) -> String {
    if id.starts_with("job-") { id.replace('.', "_") } else { id.to_string() }
}

/// The aidos id of MLflow run `id` (the inverse of [`mlflow_run_id`]). Pure.
pub fn aidos_run_id(id: &str) -> String {
    match id.strip_prefix("job-").and_then(|rest| rest.rsplit_once('_')) {
        Some((job, attempt)) => format!("job-{job}.{attempt}"),
        None => id.to_string(),
    }
}

fn artifact_uri(r: &Run) -> String {
    format!("mlflow-artifacts:/{}/{}/artifacts", r.experiment_id, mlflow_run_id(&r.id))
}

// ---- shapes ------------------------------------------------------------------------------------------------------

fn experiment_json(e: &Experiment) -> Value {
    json!({
        "experiment_id": e.id,
        "name": e.name,
        "artifact_location": format!("mlflow-artifacts:/{}", e.id),
        "lifecycle_stage": "active",
        "creation_time": e.created_at_ms,
        "last_update_time": e.created_at_ms,
        "tags": kv(&e.tags.clone().into_iter().collect()),
    })
}

/// The latest point of every metric of `r` (by step, then time).
pub fn latest_metrics(r: &Run) -> BTreeMap<&str, &MetricPoint> {
    let mut out: BTreeMap<&str, &MetricPoint> = BTreeMap::new();
    for p in &r.metrics {
        let newer = out.get(p.name.as_str()).is_none_or(|q| (p.step, p.time_ms) >= (q.step, q.time_ms));
        if newer {
            out.insert(&p.name, p);
        }
    }
    out
}

fn metric_json(p: &MetricPoint) -> Value {
    json!({"key": p.name, "value": number(p.value), "timestamp": p.time_ms, "step": p.step})
}

/// A double in MLflow's JSON: a number, or "NaN" / "Infinity" / "-Infinity" (JSON has no such numbers, and `null`
/// would read back as 0).
fn number(v: f64) -> Value {
    match v {
        v if v.is_nan() => json!("NaN"),
        f64::INFINITY => json!("Infinity"),
        f64::NEG_INFINITY => json!("-Infinity"),
        v => json!(v),
    }
}

fn run_info(r: &Run) -> Value {
    let name = if r.name.is_empty() { r.id.clone() } else { r.name.clone() };
    json!({
        "run_id": mlflow_run_id(&r.id),
        "run_uuid": mlflow_run_id(&r.id),
        "run_name": name,
        "experiment_id": r.experiment_id,
        "user_id": r.user,
        "status": r.status,
        "start_time": r.created_at_ms,
        "end_time": if r.ended_at_ms > 0 { Some(r.ended_at_ms) } else { None },
        "artifact_uri": artifact_uri(r),
        "lifecycle_stage": "active",
    })
}

fn run_json(r: &Run) -> Value {
    let mut tags: BTreeMap<String, String> = r.tags.clone().into_iter().collect();
    tags.entry("mlflow.runName".into())
        .or_insert_with(|| if r.name.is_empty() { r.id.clone() } else { r.name.clone() });
    if !r.job_id.is_empty() {
        tags.entry("aidos.job".into()).or_insert_with(|| r.job_id.clone());
    }
    let params: BTreeMap<String, String> = r.params.clone().into_iter().collect();
    json!({
        "info": run_info(r),
        "data": {
            "metrics": latest_metrics(r).values().map(|p| metric_json(p)).collect::<Vec<_>>(),
            "params": kv(&params),
            "tags": kv(&tags),
        },
        "inputs": {},
    })
}

// ---- experiments -------------------------------------------------------------------------------------------------

async fn experiments(grpc: &InProcess, h: &HeaderMap) -> Result<Vec<Experiment>, MlflowError> {
    let r = client!(RunServiceClient, grpc.clone()).list_experiments(request(h, ListExperimentsRequest {})).await;
    Ok(done(r)?.experiments)
}

async fn create_experiment(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let req =
        CreateExperimentRequest { name: field(&v, "name")?.to_string(), tags: pairs(&v["tags"]).into_iter().collect() };
    let e = done(client!(RunServiceClient, g).create_experiment(request(&h, req)).await)?;
    ok(json!({"experiment_id": e.id}))
}

async fn get_experiment(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let id = param(&query(&q)?, "experiment_id").unwrap_or_default();
    match experiments(&g, &h).await?.into_iter().find(|e| e.id == id) {
        Some(e) => ok(json!({"experiment": experiment_json(&e)})),
        None => Err(not_found(format!("No Experiment with id={id} exists"))),
    }
}

async fn get_experiment_by_name(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let name = param(&query(&q)?, "experiment_name").unwrap_or_default();
    match experiments(&g, &h).await?.into_iter().find(|e| e.name == name) {
        Some(e) => ok(json!({"experiment": experiment_json(&e)})),
        None => Err(not_found(format!("Could not find experiment with name '{name}'"))),
    }
}

async fn search_experiments(State(g): Grpc, h: HeaderMap) -> Res {
    let all = experiments(&g, &h).await?;
    ok(json!({"experiments": all.iter().map(experiment_json).collect::<Vec<_>>()}))
}

// ---- runs --------------------------------------------------------------------------------------------------------

/// Points per series enough for a run's latest metrics: the server's downsampling keeps each series' first and
/// last points (in the order reported; MLflow calls the point with the highest step the latest, which is the last
/// one unless a client logged steps out of order).
const LATEST_ONLY: u32 = 2;

/// Run `mlflow_id` with at most `max_points` per metric series (0: every point).
async fn run_of(g: &InProcess, h: &HeaderMap, mlflow_id: &str, max_points: u32) -> Result<Run, MlflowError> {
    let req = GetRunRequest { run_id: aidos_run_id(mlflow_id), max_points };
    done(client!(RunServiceClient, g.clone()).get(request(h, req)).await)
}

async fn update(g: &InProcess, h: &HeaderMap, u: UpdateRunRequest) -> Result<Run, MlflowError> {
    done(client!(RunServiceClient, g.clone()).update_run(request(h, u)).await)
}

fn run_id_of(v: &Value) -> Result<String, MlflowError> {
    let id = v["run_id"].as_str().or(v["run_uuid"].as_str()).filter(|s| !s.is_empty());
    id.map(aidos_run_id).ok_or_else(|| invalid("missing value for required parameter 'run_id'"))
}

async fn create_run(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let mut tags = pairs(&v["tags"]);
    let name =
        v["run_name"].as_str().map(str::to_string).or_else(|| tags.get("mlflow.runName").cloned()).unwrap_or_default();
    tags.remove("mlflow.runName");
    let req = CreateRunRequest {
        experiment_id: v["experiment_id"].as_str().unwrap_or("0").to_string(),
        name,
        tags: tags.into_iter().collect(),
        start_time_ms: int(&v["start_time"]).unwrap_or(0),
        user: v["user_id"].as_str().unwrap_or("").to_string(),
    };
    let run = done(client!(RunServiceClient, g).create_run(request(&h, req)).await)?;
    ok(json!({"run": run_json(&run)}))
}

async fn get_run(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let q = query(&q)?;
    let id = param(&q, "run_id").or_else(|| param(&q, "run_uuid")).unwrap_or_default();
    let run = run_of(&g, &h, &id, LATEST_ONLY).await?;
    ok(json!({"run": run_json(&run)}))
}

async fn update_run(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let u = UpdateRunRequest {
        run_id: run_id_of(&v)?,
        status: v["status"].as_str().unwrap_or("").to_string(),
        ended_at_ms: int(&v["end_time"]).unwrap_or(0),
        name: v["run_name"].as_str().unwrap_or("").to_string(),
        ..Default::default()
    };
    let run = update(&g, &h, u).await?;
    ok(json!({"run_info": run_info(&run)}))
}

fn point(m: &Value) -> Result<MetricPoint, MlflowError> {
    let value = m["value"].as_f64().or_else(|| match m["value"].as_str()? {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    });
    Ok(MetricPoint {
        name: field(m, "key")?.to_string(),
        value: value.ok_or_else(|| invalid("missing value for required parameter 'value'"))?,
        time_ms: int(&m["timestamp"]).unwrap_or_else(aidos_api::now_ms),
        step: int(&m["step"]).unwrap_or(0).max(0) as u64,
        epoch: 0,
    })
}

async fn log_metric(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    update(&g, &h, UpdateRunRequest { run_id: run_id_of(&v)?, metrics: vec![point(&v)?], ..Default::default() })
        .await?;
    ok(json!({}))
}

async fn log_param(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let params = [(field(&v, "key")?.to_string(), v["value"].as_str().unwrap_or("").to_string())].into();
    update(&g, &h, UpdateRunRequest { run_id: run_id_of(&v)?, params, ..Default::default() }).await?;
    ok(json!({}))
}

async fn set_tag(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let (key, value) = (field(&v, "key")?.to_string(), v["value"].as_str().unwrap_or("").to_string());
    // The client renames a run by setting this tag.
    let u = if key == "mlflow.runName" {
        UpdateRunRequest { run_id: run_id_of(&v)?, name: value, ..Default::default() }
    } else {
        UpdateRunRequest { run_id: run_id_of(&v)?, tags: [(key, value)].into(), ..Default::default() }
    };
    update(&g, &h, u).await?;
    ok(json!({}))
}

async fn delete_tag(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let u = UpdateRunRequest {
        run_id: run_id_of(&v)?,
        delete_tags: vec![field(&v, "key")?.to_string()],
        ..Default::default()
    };
    update(&g, &h, u).await?;
    ok(json!({}))
}

async fn log_batch(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let metrics =
        v["metrics"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(point).collect::<Result<_, _>>()?;
    let mut tags = pairs(&v["tags"]);
    let name = tags.remove("mlflow.runName").unwrap_or_default();
    let u = UpdateRunRequest {
        run_id: run_id_of(&v)?,
        params: pairs(&v["params"]).into_iter().collect(),
        metrics,
        tags: tags.into_iter().collect(),
        name,
        ..Default::default()
    };
    update(&g, &h, u).await?;
    ok(json!({}))
}

async fn metric_history(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let q = query(&q)?;
    let id = param(&q, "run_id").or_else(|| param(&q, "run_uuid")).unwrap_or_default();
    let key = param(&q, "metric_key").ok_or_else(|| invalid("missing value for required parameter 'metric_key'"))?;
    let run = run_of(&g, &h, &id, 0).await?;
    let points: Vec<Value> = run.metrics.iter().filter(|p| p.name == key).map(metric_json).collect();
    ok(json!({"metrics": points}))
}

async fn search_runs(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let ids: Vec<String> = v["experiment_ids"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    let filter =
        crate::mlflow_filter::parse(v["filter"].as_str().unwrap_or("")).map_err(|e| invalid(format!("filter: {e}")))?;
    let max = int(&v["max_results"]).unwrap_or(1000).clamp(1, 1000) as usize;
    let offset: usize = match v["page_token"].as_str().unwrap_or("") {
        "" => 0,
        t => t.parse().map_err(|_| invalid(format!("page_token {t:?}: not a token this API gave")))?,
    };
    let list = ListRunsRequest { max_points: LATEST_ONLY, ..Default::default() };
    let all = done(client!(RunServiceClient, g).list(request(&h, list)).await)?.runs;
    let mut runs: Vec<&Run> =
        all.iter().filter(|r| ids.is_empty() || ids.contains(&r.experiment_id)).filter(|r| filter.matches(r)).collect();
    let order = v["order_by"].as_array().and_then(|o| o.first()).and_then(Value::as_str).unwrap_or("");
    crate::mlflow_filter::sort(&mut runs, order).map_err(|e| invalid(format!("order_by: {e}")))?;
    let page: Vec<Value> = runs.iter().skip(offset).take(max).map(|r| run_json(r)).collect();
    let next = if offset + max < runs.len() { (offset + max).to_string() } else { String::new() };
    let mut out = json!({"runs": page});
    if !next.is_empty() {
        out["next_page_token"] = json!(next);
    }
    ok(out)
}

// ---- artifacts ---------------------------------------------------------------------------------------------------

/// `<experiment>/<run>/artifacts/<path>` split into the run's aidos id and the path ("" for the root).
fn artifact_target(full: &str) -> Result<(String, String), MlflowError> {
    let mut parts = full.trim_matches('/').splitn(4, '/');
    let (_exp, run, root, rest) = (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
    match (run, root) {
        (Some(run), Some("artifacts")) => Ok((aidos_run_id(run), rest.to_string())),
        _ => Err(invalid(format!("artifact path {full:?}: expected <experiment>/<run>/artifacts/<path>"))),
    }
}

async fn upload_artifact(State(g): Grpc, h: HeaderMap, Path(full): Path<String>, data: Bytes) -> Res {
    let (run, path) = artifact_target(&full)?;
    if path.is_empty() {
        return Err(invalid("artifact path: names no file"));
    }
    // The run first (it exists, is the caller's project's and takes files): nothing is stored for a refused call.
    let existing = run_of(&g, &h, &run, LATEST_ONLY).await?;
    if !existing.job_id.is_empty() {
        return Err(tonic::Status::failed_precondition(format!("run {run} belongs to job {}", existing.job_id)).into());
    }
    let blob = put_blob(&g, &h, data).await?;
    update(&g, &h, UpdateRunRequest { run_id: run, artifacts: [(path, blob)].into(), ..Default::default() }).await?;
    ok(json!({}))
}

/// Stores `data` as a blob through the node's BlobService; returns its id.
async fn put_blob(g: &InProcess, h: &HeaderMap, data: Bytes) -> Result<String, MlflowError> {
    let id = aidos_blob::BlobId::of(&data);
    let chunks = tokio_stream::iter(aidos_blob::service::upload_chunks(&id, data));
    done(client!(BlobServiceClient, g.clone()).upload(request(h, chunks)).await)?;
    Ok(id.to_string())
}

async fn download_artifact(State(g): Grpc, h: HeaderMap, Path(full): Path<String>) -> Res {
    let (run_id, path) = artifact_target(&full)?;
    let run = run_of(&g, &h, &run_id, LATEST_ONLY).await?;
    let Some(blob) = run.artifacts.get(&path) else {
        return Err(not_found(format!("run {run_id} has no artifact {path:?}")));
    };
    let req = BlobDownloadRequest { id: blob.clone(), offset: 0 };
    let stream = done(client!(BlobServiceClient, g).download(request(&h, req)).await)?;
    // Streamed through, a chunk at a time: a file of any size costs one chunk of memory.
    let body = axum::body::Body::from_stream(futures::StreamExt::map(stream, |d| d.map(|d| d.data)));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// The files and directories directly under `dir` of a run's artifacts, from its flat path -> blob map (sizes are
/// not kept beside the paths; MLflow's listing allows none). Pure.
pub fn listing(artifacts: &BTreeMap<String, String>, dir: &str) -> Vec<Value> {
    let prefix = if dir.is_empty() { String::new() } else { format!("{}/", dir.trim_end_matches('/')) };
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for path in artifacts.keys() {
        let Some(rest) = path.strip_prefix(&prefix) else { continue };
        match rest.split_once('/') {
            Some((sub, _)) => {
                out.entry(sub.to_string()).or_insert_with(|| json!({"path": sub, "is_dir": true}));
            }
            None => {
                out.insert(rest.to_string(), json!({"path": rest, "is_dir": false}));
            }
        }
    }
    out.into_values().collect()
}

async fn list_artifacts(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let full = param(&query(&q)?, "path").unwrap_or_default();
    let (run_id, dir) = artifact_target(&full)?;
    let run = run_of(&g, &h, &run_id, LATEST_ONLY).await?;
    ok(json!({"files": listing(&run.artifacts.into_iter().collect(), &dir)}))
}

// ---- registered models and versions --------------------------------------------------------------------------------

fn version_json(m: &ModelVersion) -> Value {
    let cfg: Value = serde_json::from_str(&m.config).unwrap_or(Value::Null);
    let source =
        cfg["source"].as_str().map(str::to_string).unwrap_or_else(|| format!("aidos:/models/{}/{}", m.name, m.version));
    let run_id = m.lineage.as_ref().map(|l| mlflow_run_id(&l.run_id)).unwrap_or_default();
    json!({
        "name": m.name,
        "version": m.version.to_string(),
        "creation_timestamp": m.created_at_ms,
        "last_updated_timestamp": m.created_at_ms,
        "current_stage": "None",
        "description": "",
        "source": source,
        "run_id": run_id,
        "status": "READY",
        "tags": [],
        "aliases": m.aliases,
    })
}

fn registered_json(name: &str, created: i64, description: &str, versions: &[&ModelVersion]) -> Value {
    let aliases: Vec<Value> = versions
        .iter()
        .flat_map(|m| m.aliases.iter().map(move |a| json!({"alias": a, "version": m.version.to_string()})))
        .collect();
    let updated = versions.iter().map(|m| m.created_at_ms).max().unwrap_or(created);
    json!({
        "name": name,
        "creation_timestamp": if created > 0 { created } else { versions.first().map_or(0, |m| m.created_at_ms) },
        "last_updated_timestamp": updated,
        "description": description,
        "latest_versions": versions.last().map(|m| vec![version_json(m)]).unwrap_or_default(),
        "tags": [],
        "aliases": aliases,
    })
}

async fn models(g: &InProcess, h: &HeaderMap, name: &str) -> Result<ListModelsResponse, MlflowError> {
    done(client!(ModelServiceClient, g.clone()).list(request(h, ListModelsRequest { name: name.to_string() })).await)
}

/// Every registered model of `all` (names with versions, and names created without one yet), by name.
fn registered(all: &ListModelsResponse) -> Vec<Value> {
    let mut by_name: BTreeMap<&str, (i64, &str, Vec<&ModelVersion>)> = BTreeMap::new();
    for n in &all.names {
        by_name.insert(&n.name, (n.created_at_ms, &n.description, Vec::new()));
    }
    for m in &all.models {
        by_name.entry(&m.name).or_insert((0, "", Vec::new())).2.push(m);
    }
    by_name.iter().map(|(name, (created, desc, vs))| registered_json(name, *created, desc, vs)).collect()
}

async fn create_registered_model(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let req = CreateModelRequest {
        name: field(&v, "name")?.to_string(),
        description: v["description"].as_str().unwrap_or("").to_string(),
    };
    let m = done(client!(ModelServiceClient, g).create(request(&h, req)).await)?;
    ok(json!({"registered_model": registered_json(&m.name, m.created_at_ms, &m.description, &[])}))
}

async fn get_registered_model(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let name = param(&query(&q)?, "name").unwrap_or_default();
    match registered(&models(&g, &h, &name).await?).into_iter().next() {
        Some(m) => ok(json!({"registered_model": m})),
        None => Err(not_found(format!("Registered Model with name={name} not found"))),
    }
}

async fn search_registered_models(State(g): Grpc, h: HeaderMap) -> Res {
    ok(json!({"registered_models": registered(&models(&g, &h, "").await?)}))
}

async fn create_model_version(State(g): Grpc, h: HeaderMap, b: Bytes) -> Res {
    let v = body(&b)?;
    let name = field(&v, "name")?.to_string();
    let source = field(&v, "source")?.to_string();
    // The run: named, or the one the source points into (mlflow-artifacts:/<exp>/<run>/artifacts/... or
    // runs:/<run>/...).
    let run_id = match v["run_id"].as_str().filter(|s| !s.is_empty()) {
        Some(r) => Some(r.to_string()),
        None => source_run(&source).map(|(r, _)| r),
    };
    let run = match &run_id {
        Some(r) => Some(run_of(&g, &h, r, LATEST_ONLY).await?),
        None => None,
    };
    // The files of the source directory, kept as the version's artifacts (`mlflow/<path>`).
    let dir = source_run(&source).map(|(_, d)| d).unwrap_or_default();
    let files: BTreeMap<String, String> = run
        .iter()
        .flat_map(|r| &r.artifacts)
        .filter(|(p, _)| dir.is_empty() || *p == &dir || p.starts_with(&format!("{dir}/")))
        .map(|(p, b)| (format!("mlflow/{p}"), b.clone()))
        .collect();
    let config = json!({"format": MLFLOW_FORMAT, "source": source, "run_id": run_id}).to_string();
    let manifest = json!({"format": MLFLOW_FORMAT, "source": source, "files": files}).to_string();
    let weights = put_blob(&g, &h, Bytes::from(manifest)).await?;
    let metrics = run.as_ref().map(|r| latest_metrics(r).into_iter().map(|(k, p)| (k.to_string(), p.value)).collect());
    let model = ModelVersion {
        name,
        weights_blob: weights,
        config,
        metrics: metrics.unwrap_or_default(),
        lineage: run.as_ref().map(|r| Lineage {
            job_id: r.job_id.clone(),
            run_id: r.id.clone(),
            params: r.params.clone(),
            aidos_version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }),
        artifacts: files.into_iter().collect(),
        ..Default::default()
    };
    let m = done(
        client!(ModelServiceClient, g)
            .register(request(&h, RegisterModelRequest { model: Some(model), ..Default::default() }))
            .await,
    )?;
    ok(json!({"model_version": version_json(&m)}))
}

/// The run id and the directory within its artifacts that an MLflow source URI names. Pure.
pub fn source_run(source: &str) -> Option<(String, String)> {
    if let Some(rest) = source.strip_prefix("runs:/") {
        let (run, path) = rest.split_once('/').unwrap_or((rest, ""));
        return Some((run.to_string(), path.trim_matches('/').to_string()));
    }
    let rest = source
        .strip_prefix("mlflow-artifacts:/")
        .or_else(|| source.split_once("/mlflow-artifacts/artifacts/").map(|(_, r)| r))?;
    let mut parts = rest.trim_start_matches('/').splitn(4, '/');
    let (_exp, run, root, path) = (parts.next()?, parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    (root == "artifacts").then(|| (run.to_string(), path.trim_matches('/').to_string()))
}

async fn get_model_version(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let q = query(&q)?;
    let name = param(&q, "name").unwrap_or_default();
    let version = param(&q, "version")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| invalid("version: a positive integer"))?;
    let m = done(
        client!(ModelServiceClient, g).get(request(&h, GetModelRequest { name, version, alias: String::new() })).await,
    )?;
    ok(json!({"model_version": version_json(&m)}))
}

async fn search_model_versions(State(g): Grpc, h: HeaderMap, RawQuery(q): RawQuery, b: Bytes) -> Res {
    // `filter` is `name='NAME'` (what the client sends for a model's versions), or nothing.
    let filter =
        param(&query(&q)?, "filter").or_else(|| body(&b).ok().and_then(|v| v["filter"].as_str().map(str::to_string)));
    let name = match filter.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(f) => match f.strip_prefix("name").map(str::trim_start).and_then(|f| f.strip_prefix('=')) {
            Some(v) => v.trim().trim_matches(|c| c == '\'' || c == '"').to_string(),
            None => return Err(invalid(format!("filter {f:?}: aidos supports name='NAME' only"))),
        },
    };
    let all = models(&g, &h, &name).await?;
    ok(json!({"model_versions": all.models.iter().map(version_json).collect::<Vec<_>>()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_round_trip_and_job_runs_lose_their_dot() {
        for (aidos, mlflow) in
            [("job-3.1", "job-3_1"), ("job-12.10", "job-12_10"), ("ml-0123456789abcdef", "ml-0123456789abcdef")]
        {
            assert_eq!(mlflow_run_id(aidos), mlflow);
            assert_eq!(aidos_run_id(mlflow), aidos);
        }
    }

    #[test]
    fn sources_name_their_run_and_directory() {
        assert_eq!(source_run("runs:/ml-1/model"), Some(("ml-1".into(), "model".into())));
        assert_eq!(source_run("mlflow-artifacts:/3/ml-1/artifacts/model"), Some(("ml-1".into(), "model".into())));
        assert_eq!(
            source_run("http://h:1/api/2.0/mlflow-artifacts/artifacts/3/ml-1/artifacts/m/x"),
            Some(("ml-1".into(), "m/x".into()))
        );
        assert_eq!(source_run("s3://bucket/model"), None);
    }

    #[test]
    fn a_listing_shows_one_level() {
        let a: BTreeMap<String, String> = [
            ("model/MLmodel".to_string(), "b1".to_string()),
            ("model/data/w.bin".to_string(), "b2".to_string()),
            ("notes.txt".to_string(), "b3".to_string()),
        ]
        .into();
        let root = listing(&a, "");
        assert_eq!(root, vec![json!({"path": "model", "is_dir": true}), json!({"path": "notes.txt", "is_dir": false})]);
        let model = listing(&a, "model");
        assert_eq!(model, vec![json!({"path": "MLmodel", "is_dir": false}), json!({"path": "data", "is_dir": true})]);
        assert!(listing(&a, "nothing").is_empty());
    }

    #[test]
    fn non_finite_metrics_keep_their_value() {
        assert_eq!(number(f64::NAN), json!("NaN"));
        assert_eq!(number(f64::NEG_INFINITY), json!("-Infinity"));
        assert_eq!(number(0.5), json!(0.5));
    }

    #[test]
    fn every_refusal_has_an_mlflow_code() {
        let r = MlflowError::from(tonic::Status::not_found("x")).into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let e = MlflowError::from(tonic::Status::already_exists("x"));
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS"));
    }
}
