//! The REST front (axum): Open Inference Protocol v2 over HTTP/JSON, with the binary tensor data extension,
//! the model repository extension and Prometheus `/metrics`.
//!
//! Binary extension: a request whose JSON header is followed by raw tensor bytes carries the header length in
//! `Inference-Header-Content-Length`; each input with `parameters.binary_data_size = n` takes the next `n` bytes.
//! Outputs are returned as raw bytes when the request asks (`parameters.binary_data_output = true`, or
//! `binary_data = true` on a requested output), the same way.
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status from [`ServeError::http_status`].
//!
//! Protobuf bodies: an infer request with `Content-Type: application/x-protobuf` ([`PROTOBUF`]) carries one gRPC
//! `ModelInferRequest` message (no gRPC length prefix) and is run exactly as the gRPC front runs it; the answer is
//! a `ModelInferResponse` message, or an error whose `grpc-status` and `grpc-message` headers are what the gRPC
//! front would have answered (beside the HTTP status and the JSON error), the key check's refusals included. A
//! body over the size limit is refused by axum before any of this (413, no gRPC status). The gateway sends gRPC requests to its
//! replicas this way, over the same pooled HTTP/1.1 connections as JSON ones, instead of as an HTTP/2 client of the
//! replica's gRPC front, which costs both more CPU per request (benches/README.md, "Serving through the gateway").
//! The model named by the path wins over the message's (the key was checked against the path); the version is
//! the path's when it names one, otherwise the message's.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use crate::ServerState;
use crate::error::ServeError;
use crate::protocol::{self, InputTensor};

const HEADER_LEN: &str = "inference-header-content-length";
/// The content type of a protobuf infer body (see the module docs).
pub const PROTOBUF: &str = "application/x-protobuf";

/// Every route template this front serves (each has a rule in [`crate::auth::http_rule`]; the tests check).
pub const ROUTES: [&str; 13] = [
    "/v2/health/live",
    "/v2/health/ready",
    "/v2",
    "/v2/models/{model}",
    "/v2/models/{model}/versions/{version}",
    "/v2/models/{model}/ready",
    "/v2/models/{model}/versions/{version}/ready",
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    "/v2/repository/index",
    "/v2/repository/models/{model}/load",
    "/v2/repository/models/{model}/unload",
    "/metrics",
];

pub fn router(state: Arc<ServerState>) -> Router {
    let limit = state.limits.max_request_bytes;
    let guard = axum::middleware::from_fn_with_state(state.clone(), guard);
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route("/v2/repository/models/{model}/unload", post(repository_unload))
        .route("/metrics", get(metrics))
        // After routing (the matched template decides the rule), before any handler or body read.
        .route_layer(guard)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(json!({"error": self.to_string()}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ServeError::OverLimit { retry_after_ms, .. } = &self {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_ms.div_ceil(1000)));
            r.headers_mut().insert(aidos_api::limits::RETRY_AFTER_METADATA, HeaderValue::from(*retry_after_ms));
        }
        r
    }
}

/// Checks every request against the server's [`crate::auth::Authorizer`] by its route's rule; a route without a
/// rule is refused.
async fn guard(
    State(s): S,
    matched: axum::extract::MatchedPath,
    Path(params): Path<std::collections::HashMap<String, String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let model = params.get("model").map(String::as_str);
    let Some(need) = crate::auth::http_rule(matched.as_str(), model) else {
        return ServeError::PermissionDenied(format!("{}: no access rule (refused)", matched.as_str())).into_response();
    };
    let authorization = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    let admitted = match s.auth.check(authorization, need) {
        Ok(key) => crate::auth::admit(s.key_limits.as_ref(), key).await,
        Err(e) => Err(e),
    };
    match admitted {
        Ok(permit) => {
            let answer = next.run(req).await;
            drop(permit);
            answer
        }
        // A protobuf body's refusal carries its gRPC status too (the gateway passes it on as is).
        Err(e) if is_protobuf(req.headers()) => protobuf_refusal(e),
        Err(e) => e.into_response(),
    }
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|c| c.as_bytes() == PROTOBUF.as_bytes())
}

/// `e` as the JSON error with its HTTP status, and as the gRPC front's status in `grpc-status` / `grpc-message`
/// (and the status's metadata, e.g. a retry hint) headers.
fn protobuf_refusal(e: ServeError) -> Response {
    let http = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let status = tonic::Status::from(e);
    let mut r = (http, axum::Json(json!({"error": status.message()}))).into_response();
    // Fails only for metadata that is not a header value, and ours are numbers.
    let _ = status.add_header(r.headers_mut());
    r
}

type S = State<Arc<ServerState>>;

async fn ready(State(s): S) -> StatusCode {
    if s.repo.is_empty() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

async fn server_metadata(State(s): S) -> impl IntoResponse {
    axum::Json(json!({"name": s.name, "version": env!("CARGO_PKG_VERSION"), "extensions": protocol::EXTENSIONS}))
}

fn metadata_json(s: &ServerState, model: &str, version: &str) -> Result<Value, ServeError> {
    let v = s.repo.resolve(model, version)?;
    let m = v.backend.metadata();
    let t = |specs: &[aidos_runtime::TensorSpec]| {
        specs
            .iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape}))
            .collect::<Vec<_>>()
    };
    Ok(json!({
        "name": model,
        "versions": s.repo.versions(model).iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": m.platform,
        "inputs": t(&m.inputs),
        "outputs": t(&m.outputs),
        "parameters": {"max_batch_size": v.backend.max_batch_size(), "runtime": v.runtime.as_str()},
    }))
}

async fn model_metadata(State(s): S, Path(model): Path<String>) -> Result<axum::Json<Value>, ServeError> {
    metadata_json(&s, &model, "").map(axum::Json)
}

async fn model_metadata_v(
    State(s): S,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ServeError> {
    metadata_json(&s, &model, &version).map(axum::Json)
}

async fn model_ready(State(s): S, Path(model): Path<String>) -> Result<StatusCode, ServeError> {
    s.repo.resolve(&model, "").map(|_| StatusCode::OK)
}

async fn model_ready_v(State(s): S, Path((model, version)): Path<(String, String)>) -> Result<StatusCode, ServeError> {
    s.repo.resolve(&model, &version).map(|_| StatusCode::OK)
}

async fn repository_index(State(s): S) -> impl IntoResponse {
    let idx: Vec<Value> = s
        .repo
        .index()
        .into_iter()
        .map(|e| json!({"name": e.name, "version": e.version.to_string(), "state": "READY", "runtime": e.runtime}))
        .collect();
    axum::Json(idx)
}

async fn repository_load(State(s): S, Path(model): Path<String>) -> Result<StatusCode, ServeError> {
    let Some(dir) = s.model_dir.clone() else {
        return Err(ServeError::InvalidInput("this server has no model repository directory to load from".into()));
    };
    if !dir.join(&model).is_dir() {
        return Err(ServeError::ModelNotFound(model));
    }
    let repo = s.repo.clone();
    let defaults = s.defaults.clone();
    let name = model.clone();
    tokio::task::spawn_blocking(move || repo.load_model_dir(&dir, &name, &defaults))
        .await
        .map_err(|e| ServeError::Unavailable(model.clone(), e.to_string()))?
        .map_err(ServeError::InvalidInput)?;
    Ok(StatusCode::OK)
}

async fn repository_unload(State(s): S, Path(model): Path<String>) -> Result<StatusCode, ServeError> {
    s.repo.unload(&model, None).map(|_| StatusCode::OK)
}

async fn metrics(State(s): S) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.repo.metrics().encode())
}

async fn infer(State(s): S, Path(model): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    run_infer(s, model, String::new(), headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn infer_v(
    State(s): S,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_infer(s, model, version, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<FlatNumbers>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// `data` of a JSON tensor: flat or nested (row-major) arrays of numbers, flattened while parsing.
/// A non-number is remembered (by position) and reported with the tensor's name.
#[derive(Default)]
struct FlatNumbers {
    values: Vec<f32>,
    bad: Option<usize>,
}

impl<'de> Deserialize<'de> for FlatNumbers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(&'a mut FlatNumbers);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Elem(self.0))?.is_some() {}
                Ok(())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
                self.0.values.push(v as f32);
                Ok(())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
                self.0.values.push(v as f32);
                Ok(())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
                self.0.values.push(v as f32);
                Ok(())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
                self.0.values.push(v as u8 as f32);
                Ok(())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
                self.bad()
            }
            fn visit_unit<E: de::Error>(self) -> Result<(), E> {
                self.bad()
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
                while m.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                self.bad()
            }
        }
        impl V<'_> {
            fn bad<E>(self) -> Result<(), E> {
                self.0.bad.get_or_insert(self.0.values.len());
                self.0.values.push(f32::NAN);
                Ok(())
            }
        }
        struct Elem<'a>(&'a mut FlatNumbers);
        impl<'de> de::DeserializeSeed<'de> for Elem<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(V(self.0))
            }
        }
        let mut out = FlatNumbers::default();
        d.deserialize_any(V(&mut out))?;
        Ok(out)
    }
}

fn param_bool(p: &Map<String, Value>, key: &str) -> bool {
    p.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// A protobuf infer body (see the module docs).
async fn protobuf_infer(s: &ServerState, model: String, version: String, body: Bytes) -> Response {
    use prost::Message as _;
    let answer = async {
        let mut req = crate::grpc::pb::ModelInferRequest::decode(body)
            .map_err(|e| ServeError::InvalidInput(format!("the body is not a protobuf ModelInferRequest: {e}")))?;
        req.model_name = model;
        if !version.is_empty() {
            req.model_version = version;
        }
        crate::grpc::infer(s, req).await
    };
    match answer.await {
        Ok(resp) => ([(header::CONTENT_TYPE, PROTOBUF)], resp.encode_to_vec()).into_response(),
        Err(e) => protobuf_refusal(e),
    }
}

async fn run_infer(
    s: Arc<ServerState>,
    model: String,
    version: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    if is_protobuf(&headers) {
        return Ok(protobuf_infer(&s, model, version, body).await);
    }
    let v = s.repo.resolve(&model, &version)?;
    if let Some(f) = v.backend.forwarder() {
        return f.http(&headers, body).await;
    }
    let header_len = match headers.get(HEADER_LEN) {
        None => body.len(),
        Some(h) => {
            h.to_str().ok().and_then(|h| h.parse::<usize>().ok()).filter(|n| *n <= body.len()).ok_or_else(|| {
                ServeError::InvalidInput(format!(
                    "header Inference-Header-Content-Length: {h:?} is not a length within the {}-byte body",
                    body.len()
                ))
            })?
        }
    };
    let req: InferRequest = serde_json::from_slice(&body[..header_len]).map_err(|e| {
        let hint = if body[..header_len].windows(3).any(|w| w == b"NaN") { " (NaN is not valid JSON)" } else { "" };
        ServeError::InvalidInput(format!("malformed JSON request: {e}{hint}"))
    })?;
    let mut binary = &body[header_len..];
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for i in req.inputs {
        let data = match (i.parameters.get("binary_data_size").and_then(Value::as_u64), i.data) {
            (Some(n), _) => {
                let n = n as usize;
                if n > s.limits.max_tensor_bytes {
                    return Err(protocol::too_large(&i.name, n, s.limits.max_tensor_bytes));
                }
                if n > binary.len() {
                    return Err(ServeError::InvalidInput(format!(
                        "input `{}`: binary_data_size {n} but only {} bytes of binary data remain",
                        i.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                protocol::f32_from_le(&i.name, mine)?
            }
            (None, Some(d)) => {
                if let Some(p) = d.bad {
                    return Err(ServeError::InvalidInput(format!("input `{}`: data[{p}] is not a number", i.name)));
                }
                d.values
            }
            (None, None) => {
                return Err(ServeError::InvalidInput(format!("input `{}`: no `data` and no binary_data_size", i.name)));
            }
        };
        inputs.push(InputTensor { name: i.name, datatype: i.datatype, shape: i.shape, data });
    }
    if !binary.is_empty() {
        return Err(ServeError::InvalidInput(format!(
            "{} bytes of binary data are not claimed by any input",
            binary.len()
        )));
    }
    let meta = v.backend.metadata();
    let tensors = protocol::prepare(meta, inputs, &s.limits)?;
    let names: Vec<String> = req.outputs.iter().map(|o| o.name.clone()).collect();
    let selected = protocol::select_outputs(meta, &names)?;
    let all_binary = param_bool(&req.parameters, "binary_data_output");
    let outputs = v.backend.infer(tensors).await?;

    let mut out_json = Vec::with_capacity(selected.len());
    let mut raw: Vec<u8> = Vec::new();
    for (k, ix) in selected.iter().enumerate() {
        let t = &outputs[*ix];
        let spec = &meta.outputs[*ix];
        let binary = all_binary || req.outputs.get(k).is_some_and(|o| param_bool(&o.parameters, "binary_data"));
        let shape: Vec<usize> = t.shape.clone();
        if binary {
            let bytes = protocol::f32_to_le(&t.data);
            out_json.push(json!({"name": spec.name, "datatype": "FP32", "shape": shape,
                                 "parameters": {"binary_data_size": bytes.len()}}));
            raw.extend_from_slice(&bytes);
        } else {
            out_json.push(json!({"name": spec.name, "datatype": "FP32", "shape": shape, "data": t.data}));
        }
    }
    let mut resp = json!({"model_name": model, "model_version": v.version.to_string(), "outputs": out_json});
    if let Some(id) = req.id {
        resp["id"] = Value::String(id);
    }
    let head = serde_json::to_vec(&resp).expect("serialising JSON values");
    if raw.is_empty() {
        return Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], head).into_response());
    }
    let len = head.len();
    let mut body = head;
    body.extend_from_slice(&raw);
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(HEADER_LEN, HeaderValue::from(len));
    Ok(r)
}
