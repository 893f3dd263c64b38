//! [`ServiceStore`]: the blob store of a cluster as a client sees it, through any scheduler node's
//! `aidos.v1.BlobService`, so a process on another machine needs only scheduler addresses (no shared directory).
//!
//! - `put` asks first whether the cluster already has the blob (`Has` with `refresh`: a blob the node reports
//!   present is refreshed there, as a put would, so the garbage collector cannot take it before it is referenced),
//!   and uploads it in [`CHUNK`]-byte chunks otherwise; the node verifies the id before the blob becomes visible.
//! - Garbage collection runs on scheduler nodes against their backing store: `list` and the deletes are refused
//!   here; `touch` is `Has` with `refresh`.
//! - `get` downloads and verifies the hash of what it received, hashing as it arrives (`Corrupt` otherwise). A
//!   download that breaks (node gone, connection reset) resumes from the bytes already received, on the next node.
//! - Failover follows the one scheduler client's rule ([`aidos_api::client`]); a call gives up when it fails after
//!   [`ServiceStore::with_budget`]'s budget (default [`DEFAULT_BUDGET`]) without progress, with the last failure,
//!   which names the node and the problem. A transfer that moves bytes restarts the budget (the last message
//!   received, the last upload attempt that took a chunk), so a long transfer still fails over.
//! - A node that stops answering (hung, SIGSTOPped, its host gone without a reset) is noticed by HTTP/2 keep-alive:
//!   a ping unanswered within the liveness timeout ([`ServiceStore::connect_with`], default [`DEFAULT_LIVENESS`];
//!   a ping every third of it) drops the connection, its calls fail as transport errors, and the next node is tried
//!   (an upload from its first chunk, a download from the bytes received). A node that is alive but slow or
//!   queueing (a full download or upload limit) answers pings and is waited for: liveness, not progress, is what
//!   is checked, so a busy cluster is not mistaken for a dead one. An upload cut off before its last chunk
//!   publishes nothing; one cut off after it may still be published by the node (the same bytes under the same id).
//!
//! Blocking, like every [`BlobStore`]: the store drives its gRPC client on its own small runtime
//! ([`crate::blocking::BlockingRuntime`], which says from where it may be called).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aidos_api::blob_service_client::BlobServiceClient;
use aidos_api::client::{AuthChannel, Client, Config, Credentials, Failure};
use aidos_api::v1::{BlobDownloadRequest, BlobUploadChunk, HasBlobsRequest};
use tonic::Status;

use crate::blocking::BlockingRuntime;
use crate::{BlobBytes, BlobError, BlobId, BlobInfo, BlobStore, Bytes};

/// Bytes per upload chunk and per download message.
pub const CHUNK: usize = 1 << 20;
/// How long one blob operation keeps trying other nodes before it gives up.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);
/// How long a node's connection may leave a keep-alive ping unanswered before the node is taken for gone; it is
/// pinged every third of it (module docs), so a hung node is left within about 1.3 times this. A ping waits behind
/// the upload data queued on the connection (up to its 16 MiB flow-control window), so an upload over a link that
/// cannot move 16 MiB in this time (under ~4.5 Mbit/s) is cut off too: such links need a longer one.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(30);
/// Chunks an upload copies ahead of the stream.
const UPLOAD_AHEAD: usize = 4;
/// Largest gRPC message accepted: a chunk plus framing.
const MAX_MESSAGE: usize = CHUNK + (64 << 10);

/// The cluster's blob store through the scheduler's `BlobService` (see the module docs).
pub struct ServiceStore {
    client: Arc<Client>,
    budget: Duration,
    rt: BlockingRuntime,
}

fn remote(store: &str, message: impl std::fmt::Display) -> BlobError {
    BlobError::Remote { store: store.to_string(), message: message.to_string() }
}

fn status_error(id: Option<&BlobId>, s: &Status) -> BlobError {
    match (s.code(), id) {
        (tonic::Code::NotFound, Some(id)) => BlobError::NotFound(id.clone()),
        _ => remote("blob service", format!("{}: {}", s.code().description(), s.message())),
    }
}

impl ServiceStore {
    /// A store reached through these scheduler addresses (`host:port`, comma-separated lists allowed), presenting
    /// `credentials`. Connects lazily.
    pub fn connect(schedulers: &[String], credentials: Credentials) -> Result<ServiceStore, BlobError> {
        Self::connect_with(schedulers, credentials, DEFAULT_LIVENESS)
    }

    /// [`ServiceStore::connect`], taking a node for gone when a keep-alive ping goes unanswered for `liveness`
    /// (module docs).
    pub fn connect_with(
        schedulers: &[String],
        credentials: Credentials,
        liveness: Duration,
    ) -> Result<ServiceStore, BlobError> {
        let liveness = liveness.max(Duration::from_millis(100));
        let cfg = Config {
            max_message: MAX_MESSAGE,
            budget: None,
            keep_alive: Some(liveness / 3),
            keep_alive_timeout: Some(liveness),
            credentials,
            ..Config::default()
        };
        let client = Client::new(schedulers, cfg).map_err(|e| remote("blob service", e))?;
        let rt = BlockingRuntime::new(1, "aidos-blob-client")
            .map_err(|e| remote("blob service", format!("starting its runtime: {e}")))?;
        Ok(ServiceStore { client: Arc::new(client), budget: DEFAULT_BUDGET, rt })
    }

    /// Sets how long one operation keeps trying before it gives up.
    /// It bounds failures, not waiting: a live node that is slow or queueing (its transfer limits full) is waited
    /// for as long as it answers keep-alive pings.
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Runs `f` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, BlobError>> + Send + 'static,
    ) -> Result<T, BlobError> {
        self.rt.wait(f).ok_or_else(|| remote("blob service", "the client's runtime stopped"))?
    }

    /// Which of `ids` the cluster holds; `refresh`: refresh the present ones (see `HasBlobsRequest.refresh`).
    fn has(&self, ids: Vec<String>, refresh: bool) -> Result<Vec<bool>, BlobError> {
        let (client, deadline) = (self.client.clone(), Instant::now() + self.budget);
        self.run(async move {
            let n = ids.len();
            let r = retrying(&client, deadline, None, |ch| {
                let req = HasBlobsRequest { ids: ids.clone(), refresh };
                async move { BlobServiceClient::new(ch).has(req).await.map(|r| r.into_inner().present) }
            })
            .await?;
            if r.len() != n {
                return Err(remote("blob service", format!("answered {} of {n} ids", r.len())));
            }
            Ok(r)
        })
    }

    /// Downloads `[offset, offset + len)` (clamped to the blob), resuming on another node when a stream breaks.
    /// Returns the bytes, the blob's total size and, when `hash`, the BLAKE3 hash of the bytes (computed as they
    /// arrive, each message while it is in cache, instead of a second pass over the blob).
    fn download(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        hash: bool,
    ) -> Result<(Vec<u8>, u64, Option<blake3::Hash>), BlobError> {
        let (client, budget, id) = (self.client.clone(), self.budget, id.clone());
        self.run(async move {
            // The budget counts from the start or from the last byte received, whichever is later.
            let mut deadline = Instant::now() + budget;
            let mut buf: Vec<u8> = Vec::new();
            let mut total: Option<u64> = None;
            let mut hasher = hash.then(blake3::Hasher::new);
            loop {
                let done = |buf: &Vec<u8>, total: Option<u64>| {
                    total.is_some_and(|t| buf.len() as u64 >= len || offset + buf.len() as u64 >= t)
                };
                if done(&buf, total) {
                    if buf.len() as u64 > len {
                        // Only a range (never hashed) asks for less than the rest of the blob.
                        buf.truncate(len as usize);
                        hasher = None;
                    }
                    return Ok((buf, total.unwrap_or(0), hasher.map(|h| h.finalize())));
                }
                let (addr, ch) = client.channel();
                let req = BlobDownloadRequest { id: id.to_string(), offset: offset + buf.len() as u64 };
                let mut api = BlobServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE);
                let failure = match api.download(req).await {
                    Err(s) => s,
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(m)) => {
                                    if total.is_none() {
                                        // Room for all of it at once (the claim is the node's; at most 1 GiB up
                                        // front), instead of growing by doubling and copying.
                                        let want = len.min(m.total_size.saturating_sub(offset)).min(1 << 30);
                                        buf.reserve_exact(want as usize);
                                    }
                                    total = Some(m.total_size);
                                    if let Some(h) = hasher.as_mut() {
                                        h.update(&m.data);
                                    }
                                    buf.extend_from_slice(&m.data);
                                    deadline = Instant::now() + budget;
                                    if done(&buf, total) {
                                        break Status::ok("");
                                    }
                                }
                                // The node ended the stream early: resume from what arrived.
                                Ok(None) => break Status::unavailable(format!("{addr} ended the download early")),
                                Err(s) => break s,
                            }
                        }
                    }
                };
                if failure.code() == tonic::Code::Ok {
                    continue;
                }
                wait_or_fail(&client, deadline, &addr, &failure, Some(&id)).await?;
            }
        })
    }
}

/// After a failed try against `addr`: Ok to try again (after a short pause unless redirected), or the error to
/// give up with.
async fn wait_or_fail(
    client: &Client,
    deadline: Instant,
    addr: &str,
    s: &Status,
    id: Option<&BlobId>,
) -> Result<(), BlobError> {
    match client.on_failure(addr, s) {
        Failure::Fatal => Err(status_error(id, s)),
        _ if Instant::now() >= deadline => {
            // Only a failure of the call itself, not an error a node passed on (say, from its S3 store).
            let hint = if s.code() == tonic::Code::Unavailable && aidos_api::client::is_transport_error(s) {
                " (no answer from the node: it is down, hung or unreachable, or left a keep-alive ping unanswered)"
            } else {
                ""
            };
            Err(remote(addr, format!("gave up after retrying: {}: {}{hint}", s.code().description(), s.message())))
        }
        Failure::Redirected => Ok(()),
        Failure::Retry => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        }
    }
}

/// A unary call, retried on other nodes by the client's rule until `deadline`.
async fn retrying<T, F, Fut>(client: &Client, deadline: Instant, id: Option<&BlobId>, mut f: F) -> Result<T, BlobError>
where
    F: FnMut(AuthChannel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    loop {
        let (addr, ch) = client.channel();
        match f(ch).await {
            Ok(v) => return Ok(v),
            Err(s) => wait_or_fail(client, deadline, &addr, &s, id).await?,
        }
    }
}

/// The messages of `BlobService.Upload` for blob `id` holding `data`: the first announces the id and the size, each
/// carries the next [`CHUNK`] bytes (one empty chunk for an empty blob), copied as it is cut: only the chunk in
/// hand is buffered.
pub fn upload_chunks<D: AsRef<[u8]>>(id: &BlobId, data: D) -> impl Iterator<Item = BlobUploadChunk> + use<D> {
    let (id, len) = (id.to_string(), data.as_ref().len());
    (0..len.div_ceil(CHUNK).max(1)).map(move |i| BlobUploadChunk {
        id: if i == 0 { id.clone() } else { String::new() },
        size: if i == 0 { len as u64 } else { 0 },
        data: Bytes::copy_from_slice(&data.as_ref()[(i * CHUNK).min(len)..((i + 1) * CHUNK).min(len)]),
    })
}

impl BlobStore for ServiceStore {
    /// Each attempt's chunks are copied from `data` one at a time on the calling thread, as the stream takes them
    /// (at most [`UPLOAD_AHEAD`] chunks ahead): the blob is never copied whole, and a retry starts again from the
    /// first chunk on the next node (after a refusal, or once the node is taken for gone: module docs).
    fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
        let id = BlobId::of(data);
        if self.has(vec![id.to_string()], true)?[0] {
            return Ok(id);
        }
        // The budget counts from the start or from the end of the last attempt that took a chunk, whichever is later.
        let mut deadline = Instant::now() + self.budget;
        loop {
            let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_AHEAD);
            // Dropped when the attempt ends, however it ends, so the calling thread never waits on a stream that
            // nobody reads any more (whatever the transport does with the request body).
            let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<()>();
            let (addr, ch) = self.client.channel();
            let attempt = self.rt.spawn(async move {
                let _ended = ended_tx;
                let mut api = BlobServiceClient::new(ch).max_encoding_message_size(MAX_MESSAGE);
                api.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(|_| ())
            });
            let mut took_any = false;
            for chunk in upload_chunks(&id, data) {
                // Not `blocking_send`, which panics on a thread inside a runtime: a caller in async code (the CLI
                // stores artifacts from its tasks) blocks its thread, as every call of this store does.
                let taken = futures::executor::block_on(async {
                    let send = std::pin::pin!(tx.send(chunk));
                    match futures::future::select(send, &mut ended).await {
                        futures::future::Either::Left((sent, _)) => sent.is_ok(),
                        futures::future::Either::Right(_) => false,
                    }
                });
                // Not taken: the attempt ended early (refused, or the node went); its result says which.
                if !taken {
                    break;
                }
                took_any = true;
            }
            drop(tx);
            let failure = match self.rt.wait(attempt) {
                Some(Ok(Ok(()))) => return Ok(id),
                Some(Ok(Err(s))) => s,
                Some(Err(e)) => Status::internal(format!("upload task: {e}")),
                None => return Err(remote("blob service", "the client's runtime stopped")),
            };
            if took_any {
                deadline = deadline.max(Instant::now() + self.budget);
            }
            let (client, id2) = (self.client.clone(), id.clone());
            self.run(async move { wait_or_fail(&client, deadline, &addr, &failure, Some(&id2)).await })?;
        }
    }

    fn get(&self, id: &BlobId) -> Result<BlobBytes, BlobError> {
        let (data, _, hash) = self.download(id, 0, u64::MAX, true)?;
        let actual = hash.map_or_else(|| BlobId::of(&data), BlobId::from_hash);
        if &actual != id {
            return Err(BlobError::Corrupt { id: id.clone(), actual });
        }
        Ok(BlobBytes::Owned(data))
    }

    fn contains(&self, id: &BlobId) -> Result<bool, BlobError> {
        Ok(self.has(vec![id.to_string()], false)?[0])
    }

    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<(Vec<u8>, u64), BlobError> {
        self.download(id, offset, len, false).map(|(data, total, _)| (data, total))
    }

    fn touch(&self, id: &BlobId) -> Result<bool, BlobError> {
        Ok(self.has(vec![id.to_string()], true)?[0])
    }

    fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        Err(not_here("listing"))
    }

    fn delete(&self, _id: &BlobId) -> Result<(), BlobError> {
        Err(not_here("deleting"))
    }

    fn delete_if_older(&self, _id: &BlobId, _cutoff: SystemTime) -> Result<bool, BlobError> {
        Err(not_here("deleting"))
    }
}

/// Listing and deleting are the garbage collector's, which runs on scheduler nodes against their backing store.
fn not_here(what: &str) -> BlobError {
    remote(
        "blob service",
        format!(
            "{what} blobs is not supported through the blob service: garbage collection runs on the scheduler \
             nodes, against the cluster's backing store"
        ),
    )
}
