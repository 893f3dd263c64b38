//! The gateway's backend: a model version served by a pool of remote replicas (other `aidos` servers).
//!
//! Requests are forwarded in their wire form ([`Forward`]): an HTTP infer request's body goes to the replica's
//! HTTP front unchanged over pooled keep-alive connections, its answer streams back unchanged. A gRPC request is
//! encoded again and POSTed as a protobuf body to the same HTTP front over the same connections ([`crate::http`]'s
//! protobuf bodies; in an A/B run of three rounds an HTTP/2 client of the replica's gRPC front cost the gateway
//! 1-10% more CPU per request); the answer's message, or its gRPC status, is the client's. A replica that
//! does not take protobuf bodies (an older release) is sent gRPC from then on. The gateway decodes no tensor: the
//! replica checks the request and its answer or refusal is the client's. [`Pool::infer`] (tensors in, tensors
//! out, over gRPC) remains for callers that hold tensors.
//!
//! Routing: each request goes to the replica with the fewest requests in flight (ties rotate). A replica that
//! fails at the transport level (cannot be reached, breaks the connection, answers UNAVAILABLE / 503: it died, is
//! draining, or hangs past [`CALL_TIMEOUT`]) is taken out of rotation for [`EJECT_FOR`] and the request is sent to
//! another one: inference has no side effects, so a retry is safe. At most [`MAX_TRIES`] replicas are tried. Any
//! other answer (a refused input, a full queue) is the client's answer and is passed on as is. A replica that
//! hangs (stopped, not dead) keeps its in-flight requests, so least-in-flight routing sends new ones elsewhere
//! until the worker's health probe restarts it.
//!
//! The endpoint list is replaced by [`Pool::set_endpoints`] (the gateway's sync loop, [`crate::gateway`], follows
//! the scheduler); connections to endpoints that stay are kept. A pool is a [`Backend`]: the repository holds it
//! like any other, and this module knows nothing of the repository.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aidos_api::auth::{AuthChannel, Credentials, with_credentials};
use aidos_runtime::{DataType, ModelMetadata, Tensor, TensorSpec};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::backend::{Backend, Forward};
use crate::error::ServeError;
use crate::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::grpc::pb::{self, model_infer_request::InferInputTensor};
use crate::metrics::{GatewayModelMetrics, GatewayReplicaMetrics, GatewaySeries};
use crate::protocol;

/// How long a replica that failed at the transport level is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(2);
/// Most replicas one request is tried on.
pub const MAX_TRIES: usize = 3;
/// Deadline of one call to a replica (a replica that has not answered by then counts as failed).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message exchanged with a replica.
const MAX_MESSAGE: usize = 64 << 20;
/// The headers of an HTTP infer request (and of its answer) that describe the body; the rest are the
/// connection's, not the request's.
const BODY_HEADERS: [&str; 2] = ["content-type", "inference-header-content-length"];

/// Where one replica listens.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplicaAddr {
    /// host:port of its gRPC front (also the replica's identity in the pool).
    pub grpc: String,
    /// host:port of its HTTP front.
    pub http: String,
}

fn url(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

struct Endpoint {
    addr: ReplicaAddr,
    client: GrpcInferenceServiceClient<AuthChannel>,
    /// `http://HOST:PORT/v2/models/NAME/versions/V/infer` on this replica.
    infer_uri: Uri,
    in_flight: AtomicUsize,
    /// The replica's HTTP front takes protobuf infer bodies (cleared when it turns out not to).
    takes_protobuf: AtomicBool,
    ejected_until: Mutex<Option<Instant>>,
    metrics: GatewayReplicaMetrics,
}

impl Endpoint {
    fn new(
        addr: &ReplicaAddr,
        infer_path: &str,
        metrics: GatewayReplicaMetrics,
        creds: &Credentials,
    ) -> Result<Endpoint, ServeError> {
        let ch = tonic::transport::Endpoint::from_shared(url(&addr.grpc))
            .map_err(|e| ServeError::InvalidInput(format!("replica address {:?}: {e}", addr.grpc)))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = GrpcInferenceServiceClient::new(with_credentials(ch, creds))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let infer_uri: Uri = format!("{}{infer_path}", url(&addr.http))
            .parse()
            .map_err(|e| ServeError::InvalidInput(format!("replica HTTP address {:?}: {e}", addr.http)))?;
        Ok(Endpoint {
            addr: addr.clone(),
            client,
            infer_uri,
            in_flight: AtomicUsize::new(0),
            takes_protobuf: AtomicBool::new(true),
            ejected_until: Mutex::new(None),
            metrics,
        })
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().unwrap().is_some_and(|t| t > now)
    }

    fn eject(&self) {
        *self.ejected_until.lock().unwrap() = Some(Instant::now() + EJECT_FOR);
        self.metrics.failed.inc();
    }

    /// Counts a request in flight until the guard drops (also when the caller's future is dropped).
    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        InFlight(self.clone())
    }
}

struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.dec();
    }
}

/// Replicas of one model version.
pub struct Pool {
    /// Model name and version on the replicas.
    model: String,
    version: u64,
    version_str: String,
    infer_path: String,
    meta: ModelMetadata,
    max_batch: usize,
    endpoints: Mutex<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
    http: HttpClient<HttpConnector, Body>,
    /// What the gateway presents to replicas (its own token), on both protocols.
    creds: Credentials,
    authorization: Option<HeaderValue>,
    series: GatewaySeries,
    metrics: GatewayModelMetrics,
}

/// What a replica's HTTP front answered a protobuf infer body.
enum ProtobufAnswer {
    Message(pb::ModelInferResponse),
    /// The replica refused or failed the request (what its gRPC front would have answered), or its answer is
    /// over the gateway's size limit.
    Status(tonic::Status),
    /// An answer without a gRPC status: a replica that takes no protobuf bodies, or refused before any of its
    /// handlers ran.
    NotProtobuf,
}

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// A failure of the replica or the connection rather than an answer about the request. tonic reports a broken
/// HTTP/2 connection (a replica killed mid-request) as INTERNAL "h2 protocol error".
fn retryable(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => true,
        tonic::Code::Internal => s.message().contains("h2 protocol error") || s.message().contains("transport error"),
        _ => false,
    }
}

/// The HTTP client every pool shares: keep-alive connections per replica, no Nagle delay.
fn http_client() -> HttpClient<HttpConnector, Body> {
    static CLIENT: std::sync::OnceLock<HttpClient<HttpConnector, Body>> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            c.set_connect_timeout(Some(Duration::from_secs(2)));
            HttpClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(c)
        })
        .clone()
}

impl Pool {
    /// Connects to the first of `endpoints` that answers and reads the model's metadata from it.
    pub async fn connect(
        model: &str,
        version: u64,
        max_batch: usize,
        endpoints: &[ReplicaAddr],
        series: GatewaySeries,
        creds: &Credentials,
    ) -> Result<Pool, ServeError> {
        let authorization = creds
            .token
            .as_ref()
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .map_err(|_| ServeError::InvalidInput("the gateway's token is not a valid header value".into()))
            })
            .transpose()?;
        let mut last = None;
        let infer_path = format!("/v2/models/{model}/versions/{version}/infer");
        for addr in endpoints {
            let ep = Endpoint::new(addr, &infer_path, series.replica(model, version, &addr.grpc), creds)?;
            let req = pb::ModelMetadataRequest { name: model.to_string(), version: version.to_string() };
            match ep.client.clone().model_metadata(req).await {
                Ok(r) => {
                    let meta = metadata_from(r.into_inner())?;
                    let pool = Pool {
                        model: model.to_string(),
                        version,
                        version_str: version.to_string(),
                        infer_path,
                        meta,
                        max_batch,
                        // The connection just made is kept (set_endpoints keeps endpoints it already has).
                        endpoints: Mutex::new(vec![Arc::new(ep)]),
                        next: AtomicUsize::new(0),
                        http: http_client(),
                        creds: creds.clone(),
                        authorization,
                        metrics: series.model(model, version),
                        series,
                    };
                    pool.set_endpoints(endpoints)?;
                    return Ok(pool);
                }
                Err(s) => last = Some(ServeError::Replica { replica: addr.grpc.clone(), status: s }),
            }
        }
        Err(last.unwrap_or_else(|| ServeError::Unavailable(model.to_string(), "no replica endpoints".into())))
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    pub fn max_batch_size(&self) -> usize {
        self.max_batch
    }

    /// Current endpoints.
    pub fn endpoints(&self) -> Vec<ReplicaAddr> {
        self.endpoints.lock().unwrap().iter().map(|e| e.addr.clone()).collect()
    }

    /// Replaces the endpoint list, keeping connections to those that stay.
    pub fn set_endpoints(&self, addrs: &[ReplicaAddr]) -> Result<(), ServeError> {
        let mut eps = self.endpoints.lock().unwrap();
        let mut next = Vec::with_capacity(addrs.len());
        for a in addrs {
            match eps.iter().find(|e| &e.addr == a) {
                Some(e) => next.push(e.clone()),
                None => next.push(Arc::new(Endpoint::new(
                    a,
                    &self.infer_path,
                    self.series.replica(&self.model, self.version, &a.grpc),
                    &self.creds,
                )?)),
            }
        }
        for gone in eps.iter().filter(|e| !addrs.contains(&e.addr)) {
            self.series.forget_replica(&self.model, self.version, &gone.addr.grpc);
        }
        *eps = next;
        Ok(())
    }

    /// The least loaded endpoint not ejected and not yet tried (ties rotate).
    fn pick(&self, tried: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.lock().unwrap();
        let now = Instant::now();
        let n = eps.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &eps[(start + i) % n])
            .filter(|e| !tried.iter().any(|t| Arc::ptr_eq(t, e)) && !e.ejected(now))
            .min_by_key(|e| e.in_flight.load(Ordering::Relaxed))
            .cloned()
    }

    /// Tries `call` on up to [`MAX_TRIES`] replicas (see the module docs). `call` answers `Ok((answer, ok))` with
    /// the client's answer (`ok`: a success, for the metrics) or `Err(why)` for a transport failure worth another
    /// replica.
    async fn route<T, F, Fut>(&self, mut call: F) -> Result<T, ServeError>
    where
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: std::future::Future<Output = Result<(Result<T, ServeError>, bool), String>>,
    {
        let start = Instant::now();
        let mut tried: Vec<Arc<Endpoint>> = Vec::with_capacity(MAX_TRIES);
        let mut last = String::new();
        while tried.len() < MAX_TRIES {
            let Some(ep) = self.pick(&tried) else { break };
            tried.push(ep.clone());
            let guard = ep.enter();
            let res = tokio::time::timeout(CALL_TIMEOUT, call(ep.clone())).await;
            drop(guard);
            match res {
                Ok(Ok((answer, ok))) => {
                    let _ = if ok { ep.metrics.ok.inc() } else { ep.metrics.refused.inc() };
                    self.metrics.seconds.observe(start.elapsed().as_secs_f64());
                    return answer;
                }
                Ok(Err(why)) => last = why,
                Err(_) => last = format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            }
            tracing::warn!(replica = %ep.addr.grpc, model = %self.model, "replica failed, trying another: {last}");
            ep.eject();
            self.metrics.retries.inc();
        }
        self.metrics.unavailable.inc();
        Err(ServeError::Unavailable(
            self.model.clone(),
            if tried.is_empty() {
                "no ready replica".into()
            } else {
                let names: Vec<&str> = tried.iter().map(|e| e.addr.grpc.as_str()).collect();
                format!("no replica could run the request (tried {}; last: {last})", names.join(", "))
            },
        ))
    }

    /// Runs `inputs` (already checked against the metadata) on a replica's gRPC front.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> {
        let req = pb::ModelInferRequest {
            model_name: self.model.clone(),
            model_version: self.version_str.clone(),
            inputs: inputs
                .iter()
                .zip(&self.meta.inputs)
                .map(|(t, spec)| InferInputTensor {
                    name: spec.name.clone(),
                    datatype: "FP32".into(),
                    shape: t.shape.iter().map(|d| *d as i64).collect(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: inputs.iter().map(|t| protocol::f32_to_le(&t.data).into()).collect(),
            ..Default::default()
        };
        let resp = self.send(req, false).await?;
        outputs_from(&resp)
    }

    /// Sends a gRPC infer request (its model version set to this pool's) to a replica: as a protobuf body to its
    /// HTTP front (see the module docs), or to its gRPC front when it does not take those.
    pub async fn forward_grpc(&self, req: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, ServeError> {
        self.send(req, true).await
    }

    /// `req` to a replica, its model version set to this pool's; `protobuf`: to its HTTP front while it takes
    /// protobuf bodies, otherwise to its gRPC front.
    async fn send(&self, mut req: pb::ModelInferRequest, protobuf: bool) -> Result<pb::ModelInferResponse, ServeError> {
        use prost::Message as _;
        req.model_version.clone_from(&self.version_str);
        // Encoded once (a copy of the tensors), shared by the retries.
        let body = if protobuf { Bytes::from(req.encode_to_vec()) } else { Bytes::new() };
        let req = &req;
        self.route(|ep| {
            let body = body.clone();
            async move {
                // A protobuf body first where the replica takes them; gRPC otherwise, or once more after an
                // answer that was not protobuf.
                let answer = match protobuf && ep.takes_protobuf.load(Ordering::Relaxed) {
                    true => self.protobuf_call(&ep, body).await?,
                    false => ProtobufAnswer::NotProtobuf,
                };
                let status = match answer {
                    ProtobufAnswer::Message(m) => Ok(m),
                    ProtobufAnswer::Status(s) => Err(s),
                    ProtobufAnswer::NotProtobuf => {
                        ep.client.clone().model_infer(req.clone()).await.map(tonic::Response::into_inner)
                    }
                };
                match status {
                    Ok(m) => Ok((Ok(m), true)),
                    Err(s) if retryable(&s) => Err(s.message().to_string()),
                    Err(s) => Ok((Err(ServeError::Replica { replica: ep.addr.grpc.clone(), status: s }), false)),
                }
            }
        })
        .await
    }

    /// POSTs an encoded `ModelInferRequest` to `ep`'s HTTP front. `Err`: the transport failed.
    async fn protobuf_call(&self, ep: &Endpoint, body: Bytes) -> Result<ProtobufAnswer, String> {
        use prost::Message as _;
        let mut req = Request::post(ep.infer_uri.clone()).body(Body::from(body)).expect("a valid request");
        req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::http::PROTOBUF));
        if let Some(a) = &self.authorization {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let (parts, incoming) = self.http.request(req).await.map_err(|e| e.to_string())?.into_parts();
        let len = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if let Some(n) = len.filter(|n| *n > MAX_MESSAGE) {
            // The request's answer, not the replica's failure (as the gRPC client's limit would say it).
            return Ok(ProtobufAnswer::Status(tonic::Status::out_of_range(format!(
                "the replica's answer of {n} bytes is over the gateway's limit of {MAX_MESSAGE} bytes"
            ))));
        }
        let body = axum::body::to_bytes(Body::new(incoming), MAX_MESSAGE).await.map_err(|e| e.to_string())?;
        if let Some(code) = parts.headers.get(GRPC_STATUS) {
            // Only the code and the message: tonic's parser panics on malformed details.
            let mut h = HeaderMap::with_capacity(2);
            h.insert(GRPC_STATUS, code.clone());
            if let Some(m) = parts.headers.get(GRPC_MESSAGE) {
                h.insert(GRPC_MESSAGE, m.clone());
            }
            let status = tonic::Status::from_header_map(&h).expect("grpc-status is set");
            if status.code() == tonic::Code::Ok {
                return Err("the replica answered grpc-status 0 without a message".into());
            }
            return Ok(ProtobufAnswer::Status(status));
        }
        let protobuf = parts.headers.get(header::CONTENT_TYPE).is_some_and(|c| c == crate::http::PROTOBUF);
        if parts.status.is_success() && protobuf {
            return pb::ModelInferResponse::decode(body)
                .map(ProtobufAnswer::Message)
                .map_err(|e| format!("the replica's answer is not a ModelInferResponse: {e}"));
        }
        if parts.status == StatusCode::BAD_REQUEST {
            // A replica of a release before protobuf bodies read this one as JSON: gRPC from now on.
            ep.takes_protobuf.store(false, Ordering::Relaxed);
        }
        // That, or refused before any of ours ran (axum's body limit): gRPC says why in gRPC's terms. The request
        // is sent twice then, which inference (no side effects) allows.
        Ok(ProtobufAnswer::NotProtobuf)
    }

    /// Sends an HTTP infer request's body to a replica's HTTP front; its response streams back unchanged.
    pub async fn forward_http(&self, headers: &HeaderMap, body: Bytes) -> Result<Response, ServeError> {
        let mut head = HeaderMap::with_capacity(BODY_HEADERS.len() + 1);
        for h in BODY_HEADERS {
            if let Some(v) = headers.get(h) {
                head.insert(h, v.clone());
            }
        }
        // The caller's key was checked here; the replica is shown the gateway's own.
        if let Some(a) = &self.authorization {
            head.insert(header::AUTHORIZATION, a.clone());
        }
        let mut attempt = 0;
        self.route(|ep| {
            let mut req = Request::post(ep.infer_uri.clone()).body(Body::from(body.clone())).expect("a valid request");
            *req.headers_mut() = head.clone();
            attempt += 1;
            let fut = self.http.request(req);
            async move {
                match fut.await {
                    // Draining or not loaded yet: another replica may answer, unless this was the last one to try.
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE && attempt < MAX_TRIES => {
                        Err(format!("HTTP {}", r.status()))
                    }
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let (parts, incoming) = r.into_parts();
                        let mut out = Body::new(incoming).into_response();
                        *out.status_mut() = parts.status;
                        for h in BODY_HEADERS.iter().chain(&[header::CONTENT_LENGTH.as_str()]) {
                            if let Some(v) = parts.headers.get(*h) {
                                out.headers_mut().insert(*h, v.clone());
                            }
                        }
                        Ok((Ok(out), ok))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }
}

impl Backend for Pool {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn max_batch_size(&self) -> usize {
        self.max_batch
    }

    fn infer(&self, inputs: Vec<Tensor>) -> futures::future::BoxFuture<'_, Result<Vec<Tensor>, ServeError>> {
        Box::pin(Pool::infer(self, inputs))
    }

    fn forwarder(&self) -> Option<&dyn Forward> {
        Some(self)
    }
}

impl Forward for Pool {
    fn http<'a>(
        &'a self,
        headers: &'a HeaderMap,
        body: Bytes,
    ) -> futures::future::BoxFuture<'a, Result<Response, ServeError>> {
        Box::pin(self.forward_http(headers, body))
    }

    fn grpc(
        &self,
        req: pb::ModelInferRequest,
    ) -> futures::future::BoxFuture<'_, Result<pb::ModelInferResponse, ServeError>> {
        Box::pin(self.forward_grpc(req))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for e in self.endpoints.get_mut().unwrap().iter() {
            self.series.forget_replica(&self.model, self.version, &e.addr.grpc);
        }
        self.series.forget_model(&self.model, self.version);
    }
}

fn metadata_from(r: pb::ModelMetadataResponse) -> Result<ModelMetadata, ServeError> {
    let spec = |t: pb::model_metadata_response::TensorMetadata| -> Result<TensorSpec, ServeError> {
        if t.datatype != "FP32" {
            return Err(ServeError::InvalidInput(format!("replica tensor `{}` has datatype {}", t.name, t.datatype)));
        }
        Ok(TensorSpec { name: t.name, datatype: DataType::Fp32, shape: t.shape })
    };
    Ok(ModelMetadata {
        platform: r.platform,
        inputs: r.inputs.into_iter().map(spec).collect::<Result<_, _>>()?,
        outputs: r.outputs.into_iter().map(spec).collect::<Result<_, _>>()?,
    })
}

fn outputs_from(r: &pb::ModelInferResponse) -> Result<Vec<Tensor>, ServeError> {
    let bad = |why: String| ServeError::Unavailable(r.model_name.clone(), format!("a replica answered {why}"));
    if r.raw_output_contents.len() != r.outputs.len() {
        return Err(bad(format!("{} raw outputs for {} tensors", r.raw_output_contents.len(), r.outputs.len())));
    }
    r.outputs
        .iter()
        .zip(&r.raw_output_contents)
        .map(|(o, raw)| {
            let data = protocol::f32_from_le(&o.name, raw)?;
            let shape: Vec<usize> = o.shape.iter().map(|d| (*d).max(0) as usize).collect();
            if shape.iter().product::<usize>() != data.len() {
                return Err(bad(format!("output `{}` of shape {:?} with {} values", o.name, o.shape, data.len())));
            }
            Ok(Tensor { shape, data })
        })
        .collect()
}
