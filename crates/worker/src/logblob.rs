//! An ended attempt's complete output as one blob in the cluster's blob store, named in its final status report
//! (`TaskStatusReport.log_blob`), so that `aidos job logs` shows it through any leader (see the scheduler's
//! `task_logs` module).
//!
//! Invariants:
//! - Written after the task ended and the log shipper drained, before the final report, from the working directory's
//!   `stdout.log` / `stderr.log` (which are complete then): frames of [`aidos_api::logframe`] with the attempt's rank
//!   and attempt number, at most [`WORKER_CHUNK`] bytes each, alternating between the two files like the shipper
//!   reads them, capped at [`MAX_JOB_LOG`] with the truncation marker.
//! - No output, no blob (the report names none). A blob that cannot be written within [`LOG_BLOB_BUDGET`] is
//!   logged and left out: the final report is never held back longer than that, nor refused for it.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::logframe::{self, MAX_JOB_LOG, WORKER_CHUNK};
use aidos_api::{LogChunk, LogStream};
use aidos_blob::{BlobId, BlobStore};

use crate::WorkerError;
use crate::agent::Shared;
use crate::records::{AttemptRecord, STDERR_FILE, STDOUT_FILE};

/// Longest a log blob write may hold back an attempt's final report.
pub const LOG_BLOB_BUDGET: Duration = Duration::from_secs(30);

/// Up to [`WORKER_CHUNK`] bytes of `f`'s next bytes; empty at its end (or without a file).
fn next_piece(f: &mut Option<std::fs::File>) -> std::io::Result<Vec<u8>> {
    let Some(file) = f.as_mut() else { return Ok(Vec::new()) };
    let mut buf = Vec::with_capacity(WORKER_CHUNK);
    file.take(WORKER_CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

fn open_optional(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The framed output of the attempt that ran in `workdir` (see the module doc), at most about `max` bytes; empty
/// when it wrote nothing. Blocking.
pub fn build_log_blob(workdir: &Path, rank: u32, attempt: u32, max: u64) -> Result<Vec<u8>, WorkerError> {
    let mut files = [STDOUT_FILE, STDERR_FILE].map(|name| (workdir.join(name), None));
    for (path, file) in files.iter_mut() {
        *file = open_optional(path).map_err(|e| WorkerError::io("open", path.as_path(), e))?;
    }
    const STREAMS: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];
    let mut out = Vec::new();
    let mut turn = 0;
    'frames: loop {
        for i in 0..2 {
            let k = (turn + i) % 2;
            let (path, file) = &mut files[k];
            let data = next_piece(file).map_err(|e| WorkerError::io("read", path.as_path(), e))?;
            if data.is_empty() {
                continue;
            }
            turn = (k + 1) % 2;
            let chunk = LogChunk { rank, attempt, stream: STREAMS[k] as i32, data };
            match logframe::capped_frame(out.len() as u64, max, &chunk) {
                Some((frame, closed)) => {
                    out.extend_from_slice(&frame);
                    if closed {
                        break 'frames;
                    }
                }
                None => break 'frames,
            }
            continue 'frames;
        }
        break;
    }
    Ok(out)
}

/// Builds the attempt's log blob from `workdir` and puts it into `store`; None when there was no output. Blocking.
pub fn store_log_blob(
    store: &dyn BlobStore,
    workdir: &Path,
    rank: u32,
    attempt: u32,
    max: u64,
) -> Result<Option<BlobId>, WorkerError> {
    let bytes = build_log_blob(workdir, rank, attempt, max)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    Ok(Some(store.put(&bytes)?))
}

/// Writes the log blob of the attempt of `record` (see the module doc); its id, or empty when there is none.
pub async fn write_log_blob(shared: &Shared, record: &AttemptRecord) -> String {
    let label = record.attempt_ref().display();
    let store = shared.blob_store.get().cloned();
    let (blobs, schedulers) = (shared.blobs.clone(), vec![shared.schedulers_env.clone()]);
    let (workdir, rank, attempt) = (record.workdir.clone(), record.rank, record.attempt);
    let work = tokio::task::spawn_blocking(move || -> Result<(Option<BlobId>, Arc<dyn BlobStore>), WorkerError> {
        let store = match store {
            Some(s) => s,
            None => blobs.open_store(&schedulers)?,
        };
        Ok((store_log_blob(store.as_ref(), &workdir, rank, attempt, MAX_JOB_LOG)?, store))
    });
    match tokio::time::timeout(LOG_BLOB_BUDGET, work).await {
        Ok(Ok(Ok((id, store)))) => {
            // Opened once, kept for the worker's life (a racing first open just loses).
            let _ = shared.blob_store.set(store);
            id.map(|id| id.to_string()).unwrap_or_default()
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!("{label}: cannot write its log blob ({e}); its logs stay with the leader that got them");
            String::new()
        }
        Ok(Err(e)) => {
            tracing::warn!("{label}: log blob task failed: {e}");
            String::new()
        }
        Err(_) => {
            tracing::warn!("{label}: log blob not written within {LOG_BLOB_BUDGET:?}; reporting without it");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_blob::LocalDirStore;

    #[test]
    fn output_is_framed_alternating_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing written: no blob.
        assert!(build_log_blob(dir.path(), 0, 1, MAX_JOB_LOG).unwrap().is_empty());
        let out: Vec<u8> = (0..WORKER_CHUNK + 10).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(dir.path().join(STDOUT_FILE), &out).unwrap();
        std::fs::write(dir.path().join(STDERR_FILE), b"err\n").unwrap();
        let blob = build_log_blob(dir.path(), 2, 3, MAX_JOB_LOG).unwrap();
        let (chunks, used) = logframe::decode_chunks(&blob);
        assert_eq!(used, blob.len());
        let streams: Vec<(i32, usize)> = chunks.iter().map(|c| (c.stream, c.data.len())).collect();
        assert_eq!(
            streams,
            vec![
                (LogStream::Stdout as i32, WORKER_CHUNK),
                (LogStream::Stderr as i32, 4),
                (LogStream::Stdout as i32, 10)
            ]
        );
        assert!(chunks.iter().all(|c| (c.rank, c.attempt) == (2, 3)));
        let stdout: Vec<u8> =
            chunks.iter().filter(|c| c.stream == LogStream::Stdout as i32).flat_map(|c| c.data.clone()).collect();
        assert_eq!(stdout, out);
        // Capped: the chunk over the limit is replaced by the marker, and nothing follows it.
        let capped = build_log_blob(dir.path(), 2, 3, 1000).unwrap();
        let (chunks, _) = logframe::decode_chunks(&capped);
        assert_eq!(chunks.len(), 1);
        assert!(logframe::is_truncation_marker(&chunks[0]));
    }

    #[test]
    fn stored_blob_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path().join("blobs")).unwrap();
        let wd = dir.path().join("wd");
        std::fs::create_dir(&wd).unwrap();
        assert_eq!(store_log_blob(&store, &wd, 0, 1, MAX_JOB_LOG).unwrap(), None);
        std::fs::write(wd.join(STDOUT_FILE), b"hello\n").unwrap();
        let id = store_log_blob(&store, &wd, 0, 1, MAX_JOB_LOG).unwrap().expect("a blob");
        let (chunks, _) = logframe::decode_chunks(&store.get(&id).unwrap());
        assert_eq!(
            chunks,
            vec![LogChunk { rank: 0, attempt: 1, stream: LogStream::Stdout as i32, data: b"hello\n".into() }]
        );
    }
}
