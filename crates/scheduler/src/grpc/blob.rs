//! `aidos.v1.BlobService`: this node's blob store for clients and workers on other machines (any node answers;
//! see `forward::policy`).
//!
//! Invariants and limits:
//! - An upload becomes visible only after its bytes hash to the id it was announced with; a truncated stream, a
//!   hash mismatch or a size over [`crate::SchedulerConfig::max_blob_bytes`] stores nothing and says which.
//!   The bytes are not held whole: they stream into the store's `put_stream` as they arrive (a directory's temp
//!   file, an S3 multipart upload), hashed on the way, and the store publishes only after the hash matched (a
//!   rename, `CompleteMultipartUpload`). An upload holds at most [`UPLOAD_BUFFERED`] messages plus what its store
//!   buffers (S3: `(upload_concurrency + 1) * part_size`); at most [`MAX_UPLOADS`] are stored at once, and one
//!   whose client sends nothing for [`UPLOAD_IDLE`] is refused.
//! - A download streams [`DOWNLOAD_CHUNK`]-byte messages from the requested offset, always at least one message
//!   (carrying the total size); it stops when the client goes away. It reads the store as one stream
//!   (`BlobStore::read_stream`: one GET on S3) ahead of the client, with a bounded buffer (`DOWNLOAD_BUFFERED`),
//!   on a thread of the blocking pool that it holds while it lasts: at most [`MAX_DOWNLOADS`] run at once, more
//!   wait for a turn before they are answered, and one whose client takes nothing for [`DOWNLOAD_IDLE`] ends.
//! - Whoever skips an upload because the node has the blob refreshes it (the blob collector's refresh rule, see
//!   `gc`): an `Upload` of a blob the store holds touches it, and `Has` with `refresh` touches each blob it
//!   reports present. A blob the store cannot touch without its bytes is treated as absent, and is uploaded.

use std::sync::Arc;

use aidos_api::blob_service_server::BlobService;
use aidos_api::v1::*;
use aidos_blob::upload::{Upload, UploadError};
use aidos_blob::{BlobError, BlobId, BlobStore, Bytes};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use super::{Res, ok};
use crate::core::Core;
use crate::leader::BoxStream;

/// Bytes per download message.
pub const DOWNLOAD_CHUNK: u64 = 1 << 20;
/// Messages a download buffers ahead of its client, so one download holds at most about DOWNLOAD_BUFFERED *
/// DOWNLOAD_CHUNK bytes (16 MiB) plus what its store reads ahead (S3: 4 pieces).
const DOWNLOAD_BUFFERED: usize = 16;
/// Downloads this node streams at once (each holds a thread of the blocking pool, which the Raft log's storage
/// shares, and up to about 20 MiB); more wait for a turn.
const MAX_DOWNLOADS: usize = 64;
/// How long a download waits for its client to take the next message before it ends: a client that stopped
/// reading, or stopped altogether, must not hold its thread and turn forever. (No server keep-alive instead: a ping
/// would wait behind the download's queued data, and cut off slow but healthy clients.)
const DOWNLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// Upload messages read ahead of the store (a chunk is 1 MiB from our clients, at most 4 MiB by the protocol).
const UPLOAD_BUFFERED: usize = 8;
/// Uploads this node stores at once; more wait for a turn before their stream is read. Each holds a thread of
/// the blocking pool (which the Raft log's storage shares) while it lasts, and up to its store's buffers.
const MAX_UPLOADS: usize = 32;
/// How long an upload waits for its client's next message before it is refused (a stalled or vanished client
/// must not hold its thread, temp file or multipart upload forever).
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// Most ids one `Has` call may ask about.
pub const MAX_HAS: usize = 1000;

pub struct Blobs {
    core: Arc<Core>,
    /// Permits for uploads being stored ([`MAX_UPLOADS`]).
    uploads: Arc<Semaphore>,
    /// Permits for downloads being streamed ([`MAX_DOWNLOADS`]).
    downloads: Arc<Semaphore>,
}

impl Blobs {
    pub fn new(core: Arc<Core>) -> Blobs {
        Blobs {
            core,
            uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        }
    }
}

fn store(core: &Core) -> Result<Arc<dyn BlobStore>, Status> {
    core.blobs.clone().ok_or_else(|| {
        Status::failed_precondition("this scheduler node has no blob store configured (aidos server --blob-dir)")
    })
}

fn blob_status(e: BlobError) -> Status {
    match e {
        BlobError::NotFound(id) => Status::not_found(format!("blob {id} not found")),
        BlobError::BadId(_) => Status::invalid_argument(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

/// Every upload refusal is the client's doing: INVALID_ARGUMENT, with the refusal's own text.
fn upload_status(e: UploadError) -> Status {
    Status::invalid_argument(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("blob store task: {e}")))?
}

/// An upload's bytes as the store pulls them ([`BlobStore::put_stream`], on a blocking thread), counted and hashed
/// on the way ([`Upload`]): after the last piece comes the verdict, nothing (the blob may be published) or an
/// error. The client's status for an error is kept in `failure` (the store's error is a stand-in).
struct Pieces {
    rx: mpsc::Receiver<Result<Bytes, Status>>,
    /// `None` once the verdict is given.
    upload: Option<Upload>,
    failure: Option<Status>,
}

impl Pieces {
    fn fail(&mut self, s: Status) -> BlobError {
        let e = BlobError::Remote { store: "upload".to_string(), message: s.message().to_string() };
        self.upload = None;
        self.failure = Some(s);
        e
    }
}

impl Iterator for Pieces {
    type Item = Result<Bytes, BlobError>;

    fn next(&mut self) -> Option<Self::Item> {
        let upload = self.upload.as_mut()?;
        match self.rx.blocking_recv() {
            Some(Ok(data)) => {
                upload.push(&data);
                if upload.wants_more() {
                    return Some(Ok(data));
                }
            }
            Some(Err(s)) => return Some(Err(self.fail(s))),
            None => {}
        }
        // The stream ended, or brought more than it announced: the verdict.
        match self.upload.take().expect("checked above").finish() {
            Ok(_) => None,
            Err(e) => Some(Err(self.fail(upload_status(e)))),
        }
    }
}

#[tonic::async_trait]
impl BlobService for Blobs {
    async fn upload(&self, r: Request<Streaming<BlobUploadChunk>>) -> Res<BlobRef> {
        let store = store(&self.core)?;
        let max = self.core.cfg.max_blob_bytes;
        let mut chunks = r.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("upload: empty stream"))?;
        let upload = Upload::start(&first.id, first.size, max).map_err(upload_status)?;
        let (id, size) = (upload.id().clone(), upload.size());
        let (s2, id2) = (store.clone(), id.clone());
        if blocking(move || s2.touch(&id2).map_err(blob_status)).await? {
            return ok(BlobRef { id: id.to_string(), size, existed: true });
        }
        // This task reads the stream; a blocking task verifies and stores what it passes on (`Pieces`). Either
        // side's end ends the other: the store stops pulling (an error, or the verdict) and the reader's sends
        // fail; the reader is dropped (the client left) and the store sees the stream end short, which `Upload`
        // refuses.
        let permit = self.uploads.clone().acquire_owned().await.expect("the upload semaphore is never closed");
        let (tx, rx) = mpsc::channel(UPLOAD_BUFFERED);
        let id2 = id.clone();
        let put = blocking(move || {
            let _permit = permit;
            let mut pieces = Pieces { rx, upload: Some(upload), failure: None };
            match store.put_stream(&id2, size, &mut pieces) {
                Ok(()) => Ok(()),
                Err(e) => Err(pieces.failure.unwrap_or_else(|| blob_status(e))),
            }
        });
        let read = async move {
            let mut next = Ok(Some(first));
            loop {
                let item = match next {
                    Ok(Some(c)) => Ok(c.data),
                    Ok(None) => return,
                    Err(s) => Err(s),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
                next = match tokio::time::timeout(UPLOAD_IDLE, chunks.message()).await {
                    Ok(m) => m,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "upload: no data from the client for {} s; nothing was stored",
                        UPLOAD_IDLE.as_secs()
                    ))),
                };
            }
        };
        // The store's end decides: a reader still waiting on a client that sent too much is dropped.
        tokio::pin!(put);
        let put = tokio::select! {
            put = &mut put => put,
            () = read => put.await,
        };
        put?;
        ok(BlobRef { id: id.to_string(), size, existed: false })
    }

    type DownloadStream = BoxStream<BlobData>;
    async fn download(&self, r: Request<BlobDownloadRequest>) -> Res<Self::DownloadStream> {
        let store = store(&self.core)?;
        let r = r.into_inner();
        let id = BlobId::parse(&r.id).map_err(|e| Status::invalid_argument(format!("download.id: {e}")))?;
        let permit = self.downloads.clone().acquire_owned().await.map_err(|_| Status::unavailable("shutting down"))?;
        let (tx, rx) = mpsc::channel(DOWNLOAD_BUFFERED);
        let (opened, open) = tokio::sync::oneshot::channel();
        let offset = r.offset;
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Whether the client took `msg` (false: it left, or took nothing for DOWNLOAD_IDLE).
            let send = |msg| rt.block_on(tokio::time::timeout(DOWNLOAD_IDLE, tx.send(msg))).is_ok_and(|r| r.is_ok());
            // Opened before answering, so a missing blob is an error status, not a broken stream.
            let stream = match store.read_stream(&id, offset, DOWNLOAD_CHUNK as usize) {
                Ok(s) => s,
                Err(e) => {
                    let _ = opened.send(Err(blob_status(e)));
                    return;
                }
            };
            if opened.send(Ok(())).is_err() {
                return;
            }
            let total = stream.total;
            let mut sent_any = false;
            for piece in stream.pieces {
                let mut piece = match piece {
                    Ok(p) => p,
                    Err(e) => {
                        send(Err(blob_status(e)));
                        return;
                    }
                };
                // Each message a slice of the piece (no copy), at most DOWNLOAD_CHUNK bytes.
                while !piece.is_empty() {
                    let data = piece.split_to(piece.len().min(DOWNLOAD_CHUNK as usize));
                    // The client left or stalled: dropping the stream stops the read.
                    if !send(Ok(BlobData { data, total_size: total })) {
                        return;
                    }
                    sent_any = true;
                }
            }
            // A store that had less than it said ends the stream short: the client's hash check fails.
            if !sent_any {
                send(Ok(BlobData { data: Bytes::new(), total_size: total }));
            }
        });
        open.await.map_err(|_| Status::internal("blob download task ended before it opened the blob"))??;
        ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn has(&self, r: Request<HasBlobsRequest>) -> Res<HasBlobsResponse> {
        let store = store(&self.core)?;
        let HasBlobsRequest { ids, refresh } = r.into_inner();
        if ids.len() > MAX_HAS {
            return Err(Status::invalid_argument(format!("ids: {} in one call, at most {MAX_HAS}", ids.len())));
        }
        let ids = ids
            .iter()
            .enumerate()
            .map(|(i, s)| BlobId::parse(s).map_err(|e| Status::invalid_argument(format!("ids[{i}]: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let present = blocking(move || {
            let check = |id: &BlobId| if refresh { store.touch(id) } else { store.contains(id) };
            ids.iter().map(|id| check(id).map_err(blob_status)).collect()
        })
        .await?;
        ok(HasBlobsResponse { present })
    }
}
