//! What runs a model version's requests: the [`Backend`] contract the fronts call through the repository.
//!
//! Two implementations live beside the code they wrap: the in-process batching actor ([`crate::batcher::Batcher`])
//! and a pool of remote replicas ([`crate::remote::Pool`], the gateway). This module imports neither, and the
//! repository holds `Arc<dyn Backend>`, so no module reaches back into another.
//!
//! A backend whose requests run on another server speaking the same protocol also offers a [`Forward`]: the
//! fronts then hand it the request in its wire form (the HTTP body, the decoded gRPC message) instead of decoding
//! tensors only for the backend to encode them again. The other server checks the request, so its answer (or its
//! refusal) goes back to the client unchanged.
//!
//! Cost: [`Backend::infer`] returns a boxed future (the trait is used as `dyn`), one allocation per request on
//! top of what the implementation already does (the batcher allocates a oneshot channel per request, the pool
//! a gRPC request).

use aidos_runtime::{ModelMetadata, Tensor};
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use futures::future::BoxFuture;

use crate::error::ServeError;
use crate::grpc::pb::{ModelInferRequest, ModelInferResponse};

/// Runs requests of one model version.
pub trait Backend: Send + Sync + 'static {
    /// The version's input and output signature; requests are checked against it before [`Backend::infer`].
    fn metadata(&self) -> &ModelMetadata;

    /// Most rows one request may carry.
    fn max_batch_size(&self) -> usize;

    /// Runs inputs already checked against [`Backend::metadata`]. Cancel-safe: dropping the future abandons the
    /// request (see each implementation for what is left behind).
    fn infer(&self, inputs: Vec<Tensor>) -> BoxFuture<'_, Result<Vec<Tensor>, ServeError>>;

    /// The backend's wire-form path, when it has one (see the module docs).
    fn forwarder(&self) -> Option<&dyn Forward> {
        None
    }
}

/// Hands inference requests, unchanged, to a server that speaks the same protocol. Both are cancel-safe as
/// [`Backend::infer`] is.
pub trait Forward: Send + Sync {
    /// An Open Inference Protocol HTTP infer request (JSON, or JSON plus binary tensors): the headers that
    /// describe the body (content type, `Inference-Header-Content-Length`) and the body. Answers with the other
    /// server's response, its body streamed through.
    fn http<'a>(&'a self, headers: &'a HeaderMap, body: Bytes) -> BoxFuture<'a, Result<Response, ServeError>>;

    /// A gRPC `ModelInfer` request, its model version set by the forwarder.
    fn grpc(&self, req: ModelInferRequest) -> BoxFuture<'_, Result<ModelInferResponse, ServeError>>;
}
