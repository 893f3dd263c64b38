//! [`BlockingRuntime`]: the small tokio runtime a blocking [`crate::BlobStore`] drives its async client on (the blob
//! service's gRPC client, `object_store`'s S3 client).
//!
//! A call spawns its future onto the runtime and waits for the result on a `std::sync::mpsc` channel: the calling
//! thread never enters the runtime, so a store works from plain threads and from `spawn_blocking` threads of another
//! runtime. Called straight from an async task it blocks that executor thread for the whole request (the store
//! trait's rule: call it from a blocking context). Dropping it shuts the runtime down in the background, never
//! blocking, so dropping a store inside an async context is safe.

use std::future::Future;

pub(crate) struct BlockingRuntime {
    /// `Some` until drop (taken there to shut down without blocking).
    rt: Option<tokio::runtime::Runtime>,
}

impl BlockingRuntime {
    pub(crate) fn new(worker_threads: usize, thread_name: &str) -> std::io::Result<BlockingRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .thread_name(thread_name)
            .enable_all()
            .build()?;
        Ok(BlockingRuntime { rt: Some(rt) })
    }

    /// Runs `fut` on the runtime and waits for it. `None`: the runtime dropped the future (it was shut down).
    pub(crate) fn wait<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("runtime lives until drop").spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }

    /// Starts `fut` on the runtime without waiting; [`BlockingRuntime::wait`] on the handle joins it.
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.rt.as_ref().expect("runtime lives until drop").spawn(fut)
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
