//! What runs a model version's requests: the [`Backend`] contract the fronts call through the repository.
//!
//! Two implementations live beside the code they wrap: the in-process batching actor ([`crate::batcher::Batcher`])
//! and a pool of remote replicas ([`crate::remote::Pool`], the gateway). This module imports neither, and the
//! repository holds `Arc<dyn Backend>`, so no module reaches back into another.
//!
//! Cost: [`Backend::infer`] returns a boxed future (the trait is used as `dyn`), one allocation per request on
//! top of what the implementation already does (the batcher allocates a oneshot channel per request, the pool
//! a gRPC request).

use aidos_runtime::{ModelMetadata, Tensor};
use futures::future::BoxFuture;

use crate::error::ServeError;

/// Runs requests of one model version.
pub trait Backend: Send + Sync + 'static {
    /// The version's input and output signature; requests are checked against it before [`Backend::infer`].
    fn metadata(&self) -> &ModelMetadata;

    /// Most rows one request may carry.
    fn max_batch_size(&self) -> usize;

    /// Runs inputs already checked against [`Backend::metadata`]. Cancel-safe: dropping the future abandons the
    /// request (see each implementation for what is left behind).
    fn infer(&self, inputs: Vec<Tensor>) -> BoxFuture<'_, Result<Vec<Tensor>, ServeError>>;
}
