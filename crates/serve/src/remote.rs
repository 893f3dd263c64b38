//! The gateway's backend: a model version served by a pool of remote replicas (other `aidos` servers), reached
//! over the Open Inference Protocol's gRPC service with raw tensor contents.
//!
//! Routing: each request goes to the replica with the fewest requests in flight (ties rotate). A replica that
//! answers with a transport failure (UNAVAILABLE, UNKNOWN, CANCELLED: it died, is draining, or cannot be reached)
//! is taken out of rotation for [`EJECT_FOR`] and the request is sent to another one: inference has no side
//! effects, so a retry is safe. At most [`MAX_TRIES`] replicas are tried. Any other answer (a refused input, a
//! full queue) is the client's answer and is passed on as is.
//!
//! The endpoint list is replaced by [`Pool::set_endpoints`] (the gateway's sync loop, [`crate::gateway`], follows
//! the scheduler); connections to endpoints that stay are kept. A pool is a [`Backend`]: the repository holds it
//! like any other, and this module knows nothing of the repository.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aidos_runtime::{DataType, ModelMetadata, Tensor, TensorSpec};
use tonic::transport::Channel;

use crate::backend::Backend;
use crate::error::ServeError;
use crate::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::grpc::pb::{self, model_infer_request::InferInputTensor};
use crate::protocol;

/// How long a replica that failed at the transport level is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(2);
/// Most replicas one request is tried on.
pub const MAX_TRIES: usize = 3;
/// Deadline of one call to a replica.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message exchanged with a replica.
const MAX_MESSAGE: usize = 64 << 20;

struct Endpoint {
    addr: String,
    client: GrpcInferenceServiceClient<Channel>,
    in_flight: AtomicUsize,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn new(addr: &str) -> Result<Endpoint, ServeError> {
        let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let ch = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| ServeError::InvalidInput(format!("replica address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = GrpcInferenceServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Endpoint { addr: addr.to_string(), client, in_flight: AtomicUsize::new(0), ejected_until: Mutex::new(None) })
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().unwrap().is_some_and(|t| t > now)
    }

    fn eject(&self) {
        *self.ejected_until.lock().unwrap() = Some(Instant::now() + EJECT_FOR);
    }
}

/// Replicas of one model version.
pub struct Pool {
    /// Model name and version on the replicas.
    model: String,
    version: u64,
    meta: ModelMetadata,
    max_batch: usize,
    endpoints: Mutex<Vec<std::sync::Arc<Endpoint>>>,
    next: AtomicUsize,
}

/// A failure of the replica or the connection rather than an answer about the request. tonic reports a broken
/// HTTP/2 connection (a replica killed mid-request) as INTERNAL "h2 protocol error".
fn retryable(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => true,
        tonic::Code::Internal => s.message().contains("h2 protocol error") || s.message().contains("transport error"),
        _ => false,
    }
}

impl Pool {
    /// Connects to the first of `endpoints` that answers and reads the model's metadata from it.
    pub async fn connect(
        model: &str,
        version: u64,
        max_batch: usize,
        endpoints: &[String],
    ) -> Result<Pool, ServeError> {
        let mut last = None;
        for addr in endpoints {
            let mut ep = Endpoint::new(addr)?;
            let req = pb::ModelMetadataRequest { name: model.to_string(), version: version.to_string() };
            match ep.client.model_metadata(req).await {
                Ok(r) => {
                    let meta = metadata_from(r.into_inner())?;
                    let pool = Pool {
                        model: model.to_string(),
                        version,
                        meta,
                        max_batch,
                        // The connection just made is kept (set_endpoints keeps endpoints it already has).
                        endpoints: Mutex::new(vec![std::sync::Arc::new(ep)]),
                        next: AtomicUsize::new(0),
                    };
                    pool.set_endpoints(endpoints)?;
                    return Ok(pool);
                }
                Err(s) => last = Some(ServeError::Replica { replica: addr.clone(), status: s }),
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

    /// Current endpoint addresses.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.lock().unwrap().iter().map(|e| e.addr.clone()).collect()
    }

    /// Replaces the endpoint list, keeping connections to those that stay.
    pub fn set_endpoints(&self, addrs: &[String]) -> Result<(), ServeError> {
        let mut eps = self.endpoints.lock().unwrap();
        let mut next = Vec::with_capacity(addrs.len());
        for a in addrs {
            match eps.iter().find(|e| &e.addr == a) {
                Some(e) => next.push(e.clone()),
                None => next.push(std::sync::Arc::new(Endpoint::new(a)?)),
            }
        }
        *eps = next;
        Ok(())
    }

    /// The least loaded endpoint not ejected and not yet tried (ties rotate).
    fn pick(&self, tried: &[String]) -> Option<std::sync::Arc<Endpoint>> {
        let eps = self.endpoints.lock().unwrap();
        let now = Instant::now();
        let n = eps.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &eps[(start + i) % n])
            .filter(|e| !tried.contains(&e.addr) && !e.ejected(now))
            .min_by_key(|e| e.in_flight.load(Ordering::Relaxed))
            .cloned()
    }

    /// Runs `inputs` (already checked against the metadata) on a replica; see the module docs for retries.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> {
        let req = pb::ModelInferRequest {
            model_name: self.model.clone(),
            model_version: self.version.to_string(),
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
            raw_input_contents: inputs.iter().map(|t| protocol::f32_to_le(&t.data)).collect(),
            ..Default::default()
        };
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<ServeError> = None;
        while tried.len() < MAX_TRIES {
            let Some(ep) = self.pick(&tried) else { break };
            tried.push(ep.addr.clone());
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(CALL_TIMEOUT);
            ep.in_flight.fetch_add(1, Ordering::Relaxed);
            let res = ep.client.clone().model_infer(r).await;
            ep.in_flight.fetch_sub(1, Ordering::Relaxed);
            match res {
                Ok(resp) => return outputs_from(&ep.addr, resp.into_inner()),
                Err(s) if retryable(&s) => {
                    tracing::warn!(replica = %ep.addr, model = %self.model, "replica failed, trying another: {}", s.message());
                    ep.eject();
                    last = Some(ServeError::Replica { replica: ep.addr.clone(), status: s });
                }
                Err(s) => return Err(ServeError::Replica { replica: ep.addr.clone(), status: s }),
            }
        }
        Err(match last {
            Some(ServeError::Replica { replica, status }) => ServeError::Unavailable(
                self.model.clone(),
                format!(
                    "no replica could run the request (tried {}; last, {replica}: {})",
                    tried.join(", "),
                    status.message()
                ),
            ),
            _ => ServeError::Unavailable(self.model.clone(), "no ready replica".into()),
        })
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

fn outputs_from(addr: &str, r: pb::ModelInferResponse) -> Result<Vec<Tensor>, ServeError> {
    if r.raw_output_contents.len() != r.outputs.len() {
        return Err(ServeError::Unavailable(
            r.model_name,
            format!(
                "replica {addr} answered {} raw outputs for {} tensors",
                r.raw_output_contents.len(),
                r.outputs.len()
            ),
        ));
    }
    r.outputs
        .iter()
        .zip(&r.raw_output_contents)
        .map(|(o, raw)| {
            let data = protocol::f32_from_le(&o.name, raw)?;
            let shape: Vec<usize> = o.shape.iter().map(|d| (*d).max(0) as usize).collect();
            if shape.iter().product::<usize>() != data.len() {
                return Err(ServeError::Unavailable(
                    r.model_name.clone(),
                    format!(
                        "replica {addr}: output `{}` shape {:?} does not hold {} values",
                        o.name,
                        o.shape,
                        data.len()
                    ),
                ));
            }
            Ok(Tensor { shape, data })
        })
        .collect()
}
