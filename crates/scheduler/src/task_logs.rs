//! Task output: where it is kept and how `JobService.Logs` serves it, across leader failovers.
//!
//! Two sources, both in the one framing of [`aidos_api::logframe`] (`[rank u32][attempt u32][stream u8][len u32]
//! [data]`, little endian, chunks of at most 64 KiB from workers, a log bounded by [`MAX_JOB_LOG`] with a marker):
//! - **Live**: while an attempt runs, its worker streams its output to the current leader (`ReportLogs`), which
//!   appends it to a leader-local file per job, `<data_dir>/task-logs/<job>.log` ([`TaskLogs`]). That file is not
//!   replicated: after a failover the new leader only has what reached it.
//! - **Final**: when an attempt ends (succeeded, failed, stopped), its worker writes the attempt's complete output
//!   as one blob in the cluster's blob store (all of `stdout.log` / `stderr.log`, alternating 64 KiB chunks as the
//!   shipper reads them), *then* sends its final status report naming it. Applying that report records the blob id
//!   on the attempt (`Attempt.log_blob`), so it is replicated with the job: every node knows it, and every node
//!   reaches the same blob store (see `aidos_blob::config`).
//!
//! Invariants:
//! - An attempt's `log_blob`, once set, is its complete output (up to the cap) and never changes. It is set by the
//!   attempt's final report, or, for an attempt the cluster cancelled (gang fault, job cancel), by the final report
//!   its worker still sends after stopping it (only the blob is recorded then).
//! - `Logs` serves an attempt with a `log_blob` from the blob and an attempt without one (running, ended on an old
//!   worker, or whose blob could not be written or read) from the leader-local file, which is then the best
//!   there is. So after a failover the output of every attempt that ended with a blob is complete; only the output
//!   of attempts still running at the failover (or without a blob) is partial.
//! - One `Logs` call sends each byte of an attempt's stream at most once, in order, and positions stay consistent
//!   across reconnects (the CLI dedups by byte counts per `(rank, attempt, stream)`): [`LogCursor`] counts what it
//!   sent of each stream from the local file and, when the attempt's blob appears (`follow` over the attempt's
//!   end), sends only the rest of each stream from the blob and ignores the attempt's local chunks from then on.
//!   The local file of the leader that received the whole run is a prefix of the blob per stream, so a follower
//!   sees live output and then the complete output exactly once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use aidos_api::logframe;
pub use aidos_api::logframe::MAX_JOB_LOG;
use aidos_api::v1::{Job, LogChunk};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Most bytes one [`TaskLogs::read_from`] reads.
const READ_MAX: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct TaskLogs {
    dir: PathBuf,
}

impl TaskLogs {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The names of the files this node holds (`<job>.log`, and anything else found there).
    pub async fn file_names(&self) -> std::io::Result<Vec<String>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            Ok(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Deletes these files (names from [`TaskLogs::file_names`]); returns how many were there.
    pub async fn remove_files(&self, names: Vec<String>) -> std::io::Result<usize> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for name in names {
                match std::fs::remove_file(dir.join(&name)) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(n)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Job ids come from the state machine (`job-N`); anything else never names a file.
    fn path(&self, job_id: &str) -> Option<PathBuf> {
        let ok = !job_id.is_empty() && job_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        ok.then(|| self.dir.join(format!("{job_id}.log")))
    }

    pub async fn append(&self, job_id: &str, c: &LogChunk) -> std::io::Result<()> {
        let Some(p) = self.path(job_id) else {
            return Ok(());
        };
        let mut f = tokio::fs::OpenOptions::new().create(true).append(true).open(&p).await?;
        let len = f.metadata().await?.len();
        if logframe::near_limit(len, MAX_JOB_LOG) && ends_with_marker(&p, len).await? {
            return Ok(());
        }
        if let Some((frame, _)) = logframe::capped_frame(len, MAX_JOB_LOG, c) {
            f.write_all(&frame).await?;
            // A tokio file writes in the background: done (visible to readers and the next append) only when flushed.
            f.flush().await?;
        }
        Ok(())
    }

    /// Reads whole chunks from `offset` (at most [`READ_MAX`] bytes); returns them and the offset after the last
    /// whole chunk.
    pub async fn read_from(&self, job_id: &str, offset: u64) -> std::io::Result<(Vec<LogChunk>, u64)> {
        let Some(p) = self.path(job_id) else {
            return Ok((vec![], offset));
        };
        let mut f = match tokio::fs::File::open(&p).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], offset)),
            Err(e) => return Err(e),
        };
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut buf = Vec::new();
        f.take(READ_MAX).read_to_end(&mut buf).await?;
        let (out, used) = logframe::decode_chunks(&buf);
        Ok((out, offset + used as u64))
    }
}

/// Whether the log file at `p` (of `len` bytes) ends with the truncation marker: it is closed.
async fn ends_with_marker(p: &Path, len: u64) -> std::io::Result<bool> {
    let n = logframe::MARKER_FRAME as u64;
    if len < n {
        return Ok(false);
    }
    let mut f = tokio::fs::File::open(p).await?;
    f.seek(std::io::SeekFrom::Start(len - n)).await?;
    let mut tail = vec![0u8; n as usize];
    f.read_exact(&mut tail).await?;
    Ok(logframe::ends_with_marker(&tail))
}

/// `(rank, attempt)`: one attempt of a job.
pub type AttemptKey = (u32, u32);

/// The progress of one `Logs` call over both sources (see the module doc): its offset in the local file, what it
/// sent of each attempt's streams from there, and which attempts it serves from their blob. Pure bookkeeping: the
/// caller reads the sources and sends what this lets through.
#[derive(Debug, Default)]
pub struct LogCursor {
    /// Offset of the next unread frame in the job's local file.
    pub offset: u64,
    /// Rank filter of the request (None: all ranks).
    rank: Option<u32>,
    /// Bytes of each `(rank, attempt, stream)` sent from the local file (truncation markers excluded).
    sent: HashMap<(u32, u32, i32), u64>,
    /// Attempts served from their blob: their local chunks are not sent any more.
    from_blob: HashSet<AttemptKey>,
    /// Attempts whose blob could not be read: served from the local file, not retried.
    unreadable: HashSet<AttemptKey>,
}

impl LogCursor {
    pub fn new(rank: Option<u32>) -> LogCursor {
        LogCursor { rank, ..Default::default() }
    }

    fn wanted(&self, rank: u32) -> bool {
        self.rank.is_none_or(|r| r == rank)
    }

    /// The attempts of `job` (within the rank filter) with a blob not served yet, oldest attempt first, then by
    /// rank: `(rank, attempt, blob id)`.
    pub fn blobs_due(&self, job: &Job) -> Vec<(u32, u32, String)> {
        let mut due: Vec<(u32, u32, String)> = job
            .tasks
            .iter()
            .filter(|t| self.wanted(t.rank))
            .flat_map(|t| t.attempts.iter().map(move |a| (t.rank, a)))
            .filter(|(rank, a)| {
                !a.log_blob.is_empty()
                    && !self.from_blob.contains(&(*rank, a.attempt))
                    && !self.unreadable.contains(&(*rank, a.attempt))
            })
            .map(|(rank, a)| (rank, a.attempt, a.log_blob.clone()))
            .collect();
        due.sort_by_key(|(rank, attempt, _)| (*attempt, *rank));
        due
    }

    /// Every attempt of `job` (within the rank filter) was served from its blob: nothing more can come.
    pub fn all_from_blobs(&self, job: &Job) -> bool {
        job.tasks
            .iter()
            .filter(|t| self.wanted(t.rank))
            .all(|t| t.attempts.iter().all(|a| self.from_blob.contains(&(t.rank, a.attempt))))
    }

    /// The blob of this attempt could not be read: keep serving it from the local file.
    pub fn blob_unreadable(&mut self, rank: u32, attempt: u32) {
        self.unreadable.insert((rank, attempt));
    }

    /// From now on this attempt is served from its blob (call before its first blob chunk).
    pub fn begin_blob(&mut self, rank: u32, attempt: u32) {
        self.from_blob.insert((rank, attempt));
    }

    /// A chunk of an attempt's blob, less what was already sent of its stream from the local file; None when
    /// nothing of it is left to send.
    pub fn blob_chunk(&mut self, mut c: LogChunk) -> Option<LogChunk> {
        let skip = self.sent.entry((c.rank, c.attempt, c.stream)).or_default();
        let len = c.data.len() as u64;
        if *skip >= len {
            *skip -= len;
            return None;
        }
        c.data.drain(..*skip as usize);
        *skip = 0;
        Some(c)
    }

    /// A chunk of the local file: Some (counted as sent) unless filtered out or its attempt is served from a blob.
    pub fn local_chunk(&mut self, c: LogChunk) -> Option<LogChunk> {
        if !self.wanted(c.rank) || self.from_blob.contains(&(c.rank, c.attempt)) {
            return None;
        }
        if !logframe::is_truncation_marker(&c) {
            *self.sent.entry((c.rank, c.attempt, c.stream)).or_default() += c.data.len() as u64;
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_api::v1::{Attempt, LogStream, Task};

    fn chunk(rank: u32, attempt: u32, stream: LogStream, data: &[u8]) -> LogChunk {
        LogChunk { rank, attempt, stream: stream as i32, data: data.to_vec() }
    }

    #[tokio::test]
    async fn frames_roundtrip_and_bad_ids_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let l = TaskLogs::new(d.path()).unwrap();
        for i in 0..3u32 {
            let c = LogChunk { rank: i, attempt: 1, stream: LogStream::Stderr as i32, data: vec![b'a' + i as u8; 10] };
            l.append("job-1", &c).await.unwrap();
        }
        let (chunks, off) = l.read_from("job-1", 0).await.unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[2].data, vec![b'c'; 10]);
        assert_eq!(chunks[1].stream, LogStream::Stderr as i32);
        let (more, off2) = l.read_from("job-1", off).await.unwrap();
        assert!(more.is_empty());
        assert_eq!(off, off2);
        l.append("../evil", &chunks[0]).await.unwrap();
        assert!(!d.path().parent().unwrap().join("evil.log").exists());
    }

    #[tokio::test]
    async fn a_full_log_stays_closed_after_its_marker() {
        let d = tempfile::tempdir().unwrap();
        let l = TaskLogs::new(d.path()).unwrap();
        // A file just below the limit (content does not matter for the size checks).
        let p = d.path().join("job-2.log");
        let big = chunk(0, 1, LogStream::Stdout, &vec![b'x'; logframe::MAX_CHUNK]);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_JOB_LOG - 100).unwrap();
        drop(f);
        l.append("job-2", &big).await.unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(len, MAX_JOB_LOG - 100 + logframe::MARKER_FRAME as u64);
        // Smaller chunks would still fit under the limit, but the log is closed.
        l.append("job-2", &chunk(0, 1, LogStream::Stdout, b"late")).await.unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
    }

    fn job(attempts: &[(u32, u32, &str)]) -> Job {
        let mut tasks: Vec<Task> = Vec::new();
        for (rank, attempt, blob) in attempts {
            while tasks.len() <= *rank as usize {
                tasks.push(Task { rank: tasks.len() as u32, ..Default::default() });
            }
            tasks[*rank as usize].attempts.push(Attempt {
                attempt: *attempt,
                log_blob: blob.to_string(),
                ..Default::default()
            });
        }
        Job { tasks, ..Default::default() }
    }

    #[test]
    fn live_output_then_the_rest_from_the_blob_exactly_once() {
        let mut cur = LogCursor::new(None);
        // Rank 0 attempt 1 runs: two local chunks go out.
        let running = job(&[(0, 1, "")]);
        assert!(cur.blobs_due(&running).is_empty());
        assert!(cur.local_chunk(chunk(0, 1, LogStream::Stdout, b"hel")).is_some());
        assert!(cur.local_chunk(chunk(0, 1, LogStream::Stderr, b"E")).is_some());
        assert!(!cur.all_from_blobs(&running));
        // It ends with a blob holding everything: only the unsent rest of each stream goes out.
        let ended = job(&[(0, 1, "b1")]);
        assert_eq!(cur.blobs_due(&ended), vec![(0, 1, "b1".to_string())]);
        cur.begin_blob(0, 1);
        let blob = [
            chunk(0, 1, LogStream::Stdout, b"he"),
            chunk(0, 1, LogStream::Stderr, b"ERR"),
            chunk(0, 1, LogStream::Stdout, b"llo"),
        ];
        let out: Vec<LogChunk> = blob.into_iter().filter_map(|c| cur.blob_chunk(c)).collect();
        assert_eq!(out, vec![chunk(0, 1, LogStream::Stderr, b"RR"), chunk(0, 1, LogStream::Stdout, b"lo")]);
        // Its late local chunks are ignored; it is not due again; the job is complete.
        assert!(cur.local_chunk(chunk(0, 1, LogStream::Stdout, b"lo")).is_none());
        assert!(cur.blobs_due(&ended).is_empty());
        assert!(cur.all_from_blobs(&ended));
    }

    #[test]
    fn blobs_come_in_attempt_order_and_respect_the_rank_filter() {
        let j = job(&[(0, 1, "a"), (0, 2, "c"), (1, 1, "b"), (1, 2, "")]);
        let all = LogCursor::new(None);
        let due: Vec<_> = all.blobs_due(&j).into_iter().map(|(_, _, b)| b).collect();
        assert_eq!(due, ["a", "b", "c"]);
        let mut one = LogCursor::new(Some(1));
        assert_eq!(one.blobs_due(&j), vec![(1, 1, "b".to_string())]);
        assert!(one.local_chunk(chunk(0, 2, LogStream::Stdout, b"x")).is_none());
        assert!(one.local_chunk(chunk(1, 2, LogStream::Stdout, b"x")).is_some());
        // An unreadable blob is not retried; that attempt stays on the local file.
        one.blob_unreadable(1, 1);
        assert!(one.blobs_due(&j).is_empty());
        assert!(one.local_chunk(chunk(1, 1, LogStream::Stdout, b"x")).is_some());
        assert!(!one.all_from_blobs(&j));
        // A marker is sent but not counted as output.
        let mut cur = LogCursor::new(None);
        let marker = LogChunk { data: logframe::TRUNCATED_MARKER.to_vec(), ..chunk(0, 1, LogStream::Stdout, b"") };
        assert!(cur.local_chunk(marker).is_some());
        cur.begin_blob(0, 1);
        assert!(cur.blob_chunk(chunk(0, 1, LogStream::Stdout, b"all")).is_some());
    }
}

/// The byte window of a `LogsRequest` (`offset`, `max_bytes`) over the chunks a log stream sends, in order. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWindow {
    skip: u64,
    /// Bytes still to send; `None`: no end.
    left: Option<u64>,
}

impl LogWindow {
    pub fn new(offset: u64, max_bytes: u64) -> LogWindow {
        LogWindow { skip: offset, left: (max_bytes > 0).then_some(max_bytes) }
    }

    /// What of `c` falls in the window (`None`: nothing; its bytes are before the window, or it is full).
    pub fn take(&mut self, mut c: LogChunk) -> Option<LogChunk> {
        let len = c.data.len() as u64;
        if self.skip >= len {
            self.skip -= len;
            return None;
        }
        let from = std::mem::take(&mut self.skip) as usize;
        let mut to = c.data.len();
        if let Some(left) = self.left.as_mut() {
            to = to.min(from + *left as usize);
            *left -= (to - from) as u64;
        }
        if to == from {
            return None;
        }
        c.data = c.data[from..to].to_vec();
        Some(c)
    }

    /// True once `max_bytes` were sent: the stream can end.
    pub fn full(&self) -> bool {
        self.left == Some(0)
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn chunk(s: &str) -> LogChunk {
        LogChunk { data: s.as_bytes().to_vec(), ..Default::default() }
    }

    #[test]
    fn a_window_skips_then_sends_at_most_its_size_across_chunks() {
        let mut w = LogWindow::new(3, 5);
        let got: Vec<String> = ["ab", "cdef", "ghij", "kl"]
            .into_iter()
            .filter_map(|s| w.take(chunk(s)))
            .map(|c| String::from_utf8(c.data).unwrap())
            .collect();
        assert_eq!(got, vec!["def", "gh"]);
        assert!(w.full());
        let mut all = LogWindow::new(0, 0);
        assert_eq!(all.take(chunk("xyz")).unwrap().data, b"xyz");
        assert!(!all.full());
        let mut past = LogWindow::new(100, 0);
        assert!(past.take(chunk("xyz")).is_none());
    }
}
