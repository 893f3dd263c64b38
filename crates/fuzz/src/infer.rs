//! The inference fronts as a client reaches them: the HTTP router (`aidos_serve::http::router`) called in-process
//! with the fuzzed body, and the gRPC service's `ModelInfer` with the fuzzed protobuf message, both in front of a
//! real batcher and a model `m` (input `x`: `[-1, 4]` FP32; output `y = 2x`). One runtime and one server state per
//! process.

use std::sync::{Arc, OnceLock};

use aidos_runtime::{DataType, Instance, ModelMetadata, ModelRuntime, RuntimeKind, Tensor, TensorSpec};
use aidos_serve::grpc::pb::ModelInferRequest;
use aidos_serve::grpc::pb::grpc_inference_service_server::GrpcInferenceService;
use aidos_serve::{BatchConfig, Limits, Metrics, Repository, ServerState};
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

/// The model's input width.
pub const WIDTH: usize = 4;

struct Double(ModelMetadata);

struct DoubleInstance;

impl Instance for DoubleInstance {
    fn run(&mut self, inputs: &[Tensor]) -> aidos_runtime::Result<Vec<Tensor>> {
        let x = &inputs[0];
        Ok(vec![Tensor { shape: x.shape.clone(), data: x.data.iter().map(|v| v * 2.0).collect() }])
    }
}

impl ModelRuntime for Double {
    fn metadata(&self) -> &ModelMetadata {
        &self.0
    }
    fn instance(&self) -> aidos_runtime::Result<Box<dyn Instance>> {
        Ok(Box::new(DoubleInstance))
    }
}

struct Server {
    rt: tokio::runtime::Runtime,
    state: Arc<ServerState>,
    /// The HTTP front, built once (each request takes a clone: `oneshot` consumes it).
    router: axum::Router,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let spec = |n: &str| TensorSpec { name: n.into(), datatype: DataType::Fp32, shape: vec![-1, WIDTH as i64] };
        let model =
            Double(ModelMetadata { platform: "fuzz".into(), inputs: vec![spec("x")], outputs: vec![spec("y")] });
        let state = rt.block_on(async {
            let repo = Arc::new(Repository::new(Arc::new(Metrics::default())));
            let batch = BatchConfig { max_batch_size: 64, ..BatchConfig::default() };
            repo.load("m", 1, RuntimeKind::Tract, Arc::new(model), batch).expect("the fuzz model loads");
            // Small limits, so the size checks are within the fuzzer's reach.
            let limits = Limits { max_request_bytes: 1 << 16, max_tensor_bytes: 1 << 12 };
            Arc::new(ServerState {
                repo,
                limits,
                name: "fuzz".into(),
                model_dir: None,
                defaults: BatchConfig::default(),
                auth: Arc::new(aidos_serve::auth::Open),
                key_limits: None,
            })
        });
        let router = aidos_serve::http::router(state.clone());
        Server { rt, state, router }
    })
}

/// Posts `body` to model `m`'s infer route; the answer's HTTP status.
pub fn post(body: &[u8], header_len: Option<usize>) -> u16 {
    let s = server();
    let mut req = Request::post("/v2/models/m/infer").header("content-type", "application/json");
    if let Some(n) = header_len {
        req = req.header("inference-header-content-length", n.to_string());
    }
    let req = req.body(Body::from(body.to_vec())).expect("a request");
    s.rt.block_on(async {
        let resp = s.router.clone().oneshot(req).await.expect("the router answers");
        let status = resp.status().as_u16();
        assert!(status != 500, "a client's request answered 500");
        let _ = axum::body::to_bytes(resp.into_body(), usize::MAX).await;
        status
    })
}

/// The body as a JSON request.
pub fn json(data: &[u8]) {
    post(data, None);
}

/// The status [`binary`] would get.
pub fn binary_status(data: &[u8]) -> u16 {
    if data.len() < 2 {
        return 0;
    }
    post(&data[2..], Some(u16::from_le_bytes([data[0], data[1]]) as usize))
}

/// The first two bytes (LE) as the `Inference-Header-Content-Length`, the rest as the body.
pub fn binary(data: &[u8]) {
    binary_status(data);
}

/// The message as `ModelInfer` receives it.
pub fn grpc(data: &[u8]) {
    use prost::Message;
    let Ok(msg) = ModelInferRequest::decode(data) else { return };
    let s = server();
    let front = aidos_serve::grpc::front(s.state.clone());
    s.rt.block_on(async {
        if let Err(status) = front.model_infer(tonic::Request::new(msg)).await {
            assert!(status.code() != tonic::Code::Internal, "a client's request answered INTERNAL: {status}");
        }
    });
}
