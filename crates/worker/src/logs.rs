//! Tailing an attempt's `stdout.log` / `stderr.log` and streaming them to the leader (`ReportLogs`).
//!
//! Invariants:
//! - `sent` offsets only move forward, by exactly the bytes handed to the current stream. A chunk is
//!   never re-read once handed over, so a reconnect resumes at the last sent offset: chunks still in
//!   flight when a leader dies may be lost, nothing is duplicated within one worker run.
//! - The offsets are persisted in `workdir/log_offsets.json` (at most once a second, and at the end),
//!   so a restarted worker resumes close to where it stopped (at most ~1 s of output duplicated).
//! - Chunks are at most 64 KiB; files are polled every 100 ms; a stream is opened only once there is
//!   something to send, and closed (then acknowledged) when the attempt finished and all was sent.
//! - After the finish signal the shipper drains both files and gives up after [`FINISH_BUDGET`] so a
//!   broken log path never holds back the attempt's final status for long.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::{AttemptRef, LogReport, LogStream, ReportAck};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::connection::{Backoff, Connection, Failure};
use crate::records::{LOG_OFFSETS_FILE, STDERR_FILE, STDOUT_FILE, write_atomic};

pub const CHUNK_MAX: usize = 64 * 1024;
pub const POLL: Duration = Duration::from_millis(100);
pub const FINISH_BUDGET: Duration = Duration::from_secs(20);
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Bytes of each file already handed to the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOffsets {
    pub stdout: u64,
    pub stderr: u64,
}

impl LogOffsets {
    fn get(&self, s: LogStream) -> u64 {
        if s == LogStream::Stderr { self.stderr } else { self.stdout }
    }
    fn advance(&mut self, s: LogStream, n: u64) {
        if s == LogStream::Stderr { self.stderr += n } else { self.stdout += n }
    }
}

pub fn load_offsets(workdir: &Path) -> LogOffsets {
    std::fs::read(workdir.join(LOG_OFFSETS_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

async fn save_offsets(workdir: &Path, off: LogOffsets) {
    let path = workdir.join(LOG_OFFSETS_FILE);
    let res =
        tokio::task::spawn_blocking(move || write_atomic(&path, &serde_json::to_vec(&off).unwrap_or_default())).await;
    if let Ok(Err(e)) = res {
        tracing::debug!("cannot save log offsets in {}: {e}", workdir.display());
    }
}

/// Up to [`CHUNK_MAX`] bytes of `path` from `offset`; empty when there is nothing (or no file yet).
pub async fn read_chunk(path: &Path, offset: u64) -> Vec<u8> {
    let Ok(mut f) = tokio::fs::File::open(path).await else { return Vec::new() };
    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = vec![0u8; CHUNK_MAX];
    let mut n = 0;
    while n < CHUNK_MAX {
        match f.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf.truncate(n);
    buf
}

/// The next chunk to send, alternating between the two files so neither starves the other.
async fn next_chunk(workdir: &Path, off: &LogOffsets, turn: &mut usize) -> Option<(LogStream, Vec<u8>)> {
    const ORDER: [(LogStream, &str); 2] = [(LogStream::Stdout, STDOUT_FILE), (LogStream::Stderr, STDERR_FILE)];
    for i in 0..2 {
        let (stream, file) = ORDER[(*turn + i) % 2];
        let data = read_chunk(&workdir.join(file), off.get(stream)).await;
        if !data.is_empty() {
            *turn = (*turn + i + 1) % 2;
            return Some((stream, data));
        }
    }
    None
}

type AckFuture = Pin<Box<dyn Future<Output = Result<tonic::Response<ReportAck>, Status>> + Send>>;

/// One open `ReportLogs` stream.
struct Session {
    addr: String,
    tx: mpsc::Sender<LogReport>,
    call: AckFuture,
}

impl Session {
    fn open(conn: &Connection) -> Session {
        let (addr, mut client) = conn.client();
        let (tx, rx) = mpsc::channel(8);
        let call = Box::pin(async move { client.report_logs(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        Session { addr, tx, call }
    }
}

async fn session_end(session: &mut Option<Session>) -> Result<tonic::Response<ReportAck>, Status> {
    match session {
        Some(s) => (&mut s.call).await,
        None => std::future::pending().await,
    }
}

/// Ships the attempt's logs until `finish` turns true (or its sender is dropped) and everything was
/// sent, or the scheduler refuses the stream (stale attempt).
pub async fn ship_logs(
    conn: Arc<Connection>,
    worker_id: String,
    aref: AttemptRef,
    workdir: PathBuf,
    mut finish: watch::Receiver<bool>,
) {
    let name = aref.display();
    let mut off = load_offsets(&workdir);
    let mut saved = off;
    let mut last_save = Instant::now();
    let mut session: Option<Session> = None;
    let mut backoff = crate::connection::backoff();
    let mut finishing = *finish.borrow();
    let mut deadline: Option<Instant> = None;
    let mut turn = 0usize;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // What to do after a stream ended; false: stop shipping.
    async fn after_end(
        conn: &Connection,
        name: &str,
        addr: &str,
        res: Result<tonic::Response<ReportAck>, Status>,
        backoff: &mut Backoff,
    ) -> bool {
        match res {
            Ok(_) => true, // closed early by the server: reopen when there is data
            Err(st) => match conn.on_failure(addr, &st) {
                Failure::Fatal => {
                    tracing::warn!("log stream for {name} refused by scheduler: {} ({})", st.message(), st.code());
                    false
                }
                Failure::Redirected => true,
                Failure::Retry => {
                    tracing::debug!("log stream for {name} broke ({}: {}); reconnecting", st.code(), st.message());
                    tokio::time::sleep(backoff.next_delay()).await;
                    true
                }
            },
        }
    }

    loop {
        if finishing && deadline.is_none() {
            deadline = Some(Instant::now() + FINISH_BUDGET);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!("{name}: giving up on shipping the rest of its logs");
            break;
        }
        match next_chunk(&workdir, &off, &mut turn).await {
            Some((stream, data)) => {
                let s = session.get_or_insert_with(|| Session::open(&conn));
                let len = data.len() as u64;
                let msg = LogReport {
                    worker_id: worker_id.clone(),
                    attempt: Some(aref.clone()),
                    stream: stream as i32,
                    data,
                };
                let ended = tokio::select! {
                    r = s.tx.send(msg) => match r {
                        Ok(()) => { off.advance(stream, len); None }
                        // The receiving side is gone: the call is over; collect its result.
                        Err(_) => Some((&mut s.call).await),
                    },
                    res = &mut s.call => Some(res),
                };
                if let Some(res) = ended {
                    let s = session.take().expect("session is open");
                    if !after_end(&conn, &name, &s.addr, res, &mut backoff).await {
                        break;
                    }
                }
            }
            None if finishing => {
                let Some(s) = session.take() else { break };
                let Session { addr, tx, call } = s;
                drop(tx);
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(FINISH_BUDGET);
                match tokio::time::timeout(left, call).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(st)) => {
                        // Anything queued on that stream may be lost; the files are fully sent.
                        let _ = after_end(&conn, &name, &addr, Err(st), &mut backoff).await;
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("{name}: log stream not acknowledged in time");
                        break;
                    }
                }
            }
            None => {
                tokio::select! {
                    res = session_end(&mut session) => {
                        let s = session.take().expect("session is open");
                        if !after_end(&conn, &name, &s.addr, res, &mut backoff).await {
                            break;
                        }
                    }
                    r = finish.changed() => {
                        if r.is_err() || *finish.borrow() {
                            finishing = true;
                        }
                    }
                    _ = tick.tick() => {}
                }
            }
        }
        if off != saved && (finishing || last_save.elapsed() >= SAVE_EVERY) {
            save_offsets(&workdir, off).await;
            saved = off;
            last_save = Instant::now();
        }
    }
    if off != saved {
        save_offsets(&workdir, off).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_bounded_and_resume_at_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STDOUT_FILE);
        assert!(read_chunk(&p, 0).await.is_empty());
        std::fs::write(&p, vec![b'x'; CHUNK_MAX + 10]).unwrap();
        assert_eq!(read_chunk(&p, 0).await.len(), CHUNK_MAX);
        assert_eq!(read_chunk(&p, CHUNK_MAX as u64).await.len(), 10);
        assert!(read_chunk(&p, (CHUNK_MAX + 10) as u64).await.is_empty());
    }

    #[tokio::test]
    async fn alternates_between_streams() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STDOUT_FILE), b"out").unwrap();
        std::fs::write(dir.path().join(STDERR_FILE), b"err").unwrap();
        let mut off = LogOffsets::default();
        let mut turn = 0;
        let (s1, d1) = next_chunk(dir.path(), &off, &mut turn).await.unwrap();
        off.advance(s1, d1.len() as u64);
        let (s2, d2) = next_chunk(dir.path(), &off, &mut turn).await.unwrap();
        off.advance(s2, d2.len() as u64);
        assert_ne!(s1, s2);
        assert!(next_chunk(dir.path(), &off, &mut turn).await.is_none());
        assert_eq!(off, LogOffsets { stdout: 3, stderr: 3 });
        save_offsets(dir.path(), off).await;
        assert_eq!(load_offsets(dir.path()), off);
    }
}
