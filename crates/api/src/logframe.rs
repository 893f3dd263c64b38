//! The one framing of task output, shared by the leader's task-log files (`aidos_scheduler::task_logs`) and the
//! log blobs workers write when an attempt ends: a sequence of frames
//! `[rank u32][attempt u32][stream u8][len u32][data]`, little endian, each carrying one [`LogChunk`].
//!
//! Invariants:
//! - A frame's data is 1..=[`MAX_CHUNK`] bytes (workers cut chunks of at most [`WORKER_CHUNK`]); empty or larger
//!   chunks are never framed.
//! - A framed log stops growing at [`MAX_JOB_LOG`] bytes: the first chunk whose frame would cross the limit is
//!   replaced by one [`TRUNCATED_MARKER`] frame (which may end up to [`MARKER_FRAME`] bytes past it), and nothing
//!   is appended after that marker ([`capped_frame`]; a writer that does not remember it finds it again with
//!   [`near_limit`] and [`ends_with_marker`]).
//! - Decoding stops at the first incomplete frame and says how many bytes it consumed, so a reader of a file that
//!   is still being appended to can resume exactly there.

use crate::v1::{LogChunk, LogStream};

/// Bytes of a frame header.
pub const HEADER: usize = 13;
/// Largest chunk a framed log accepts.
pub const MAX_CHUNK: usize = 1 << 20;
/// Largest chunk a worker sends or writes (one read of its output files).
pub const WORKER_CHUNK: usize = 64 * 1024;
/// Bound of one framed log (a job's leader-local log file, one attempt's log blob).
pub const MAX_JOB_LOG: u64 = 256 << 20;
/// The data of the frame that replaces the first chunk over [`MAX_JOB_LOG`].
pub const TRUNCATED_MARKER: &[u8] = b"\n[aidos: log size limit reached]\n";
/// Bytes of the marker's frame.
pub const MARKER_FRAME: usize = HEADER + TRUNCATED_MARKER.len();

/// Appends the frame of `c` to `out` (whatever its size: callers check the limits).
pub fn encode_chunk(out: &mut Vec<u8>, c: &LogChunk) {
    out.reserve(HEADER + c.data.len());
    out.extend_from_slice(&c.rank.to_le_bytes());
    out.extend_from_slice(&c.attempt.to_le_bytes());
    out.push(c.stream as u8);
    out.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&c.data);
}

/// What to append to a framed log of `len` bytes bounded by `max` (normally [`MAX_JOB_LOG`]) that does not end with
/// the marker yet: the chunk's own frame (`false`), or the [`TRUNCATED_MARKER`] frame when the chunk's frame would
/// cross `max` (`true`: the log is closed, append nothing more). None for an empty chunk, one over [`MAX_CHUNK`], or
/// a log already at `max`.
pub fn capped_frame(len: u64, max: u64, c: &LogChunk) -> Option<(Vec<u8>, bool)> {
    if c.data.is_empty() || c.data.len() > MAX_CHUNK || len >= max {
        return None;
    }
    let mut out = Vec::new();
    let crosses = len + (HEADER + c.data.len()) as u64 > max;
    if crosses {
        encode_chunk(&mut out, &LogChunk { data: TRUNCATED_MARKER.to_vec(), ..c.clone() });
    } else {
        encode_chunk(&mut out, c);
    }
    Some((out, crosses))
}

/// Whether a log of `len` bytes bounded by `max` may already end with the marker: the marker is only written when
/// a frame of at most `HEADER + MAX_CHUNK` bytes would cross `max`. Only then is its tail worth reading.
pub fn near_limit(len: u64, max: u64) -> bool {
    len + (HEADER + MAX_CHUNK) as u64 > max
}

/// Whether `tail`, the last bytes of a framed log, is (or ends with) the marker's frame.
pub fn ends_with_marker(tail: &[u8]) -> bool {
    let Some(frame) = tail.len().checked_sub(MARKER_FRAME).map(|start| &tail[start..]) else { return false };
    frame[9..HEADER] == (TRUNCATED_MARKER.len() as u32).to_le_bytes() && &frame[HEADER..] == TRUNCATED_MARKER
}

/// Whether `c` is the marker [`capped_frame`] writes instead of a chunk (it is no part of the task's output).
pub fn is_truncation_marker(c: &LogChunk) -> bool {
    c.data == TRUNCATED_MARKER
}

/// The first whole frame of `buf` and its length in bytes; None when `buf` does not start with a whole frame.
/// An unknown stream number reads as stdout.
pub fn decode_chunk(buf: &[u8]) -> Option<(LogChunk, usize)> {
    let h = buf.get(..HEADER)?;
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let len = u32_at(9) as usize;
    let data = buf.get(HEADER..HEADER.checked_add(len)?)?;
    let chunk = LogChunk {
        rank: u32_at(0),
        attempt: u32_at(4),
        stream: LogStream::try_from(h[8] as i32).unwrap_or(LogStream::Stdout) as i32,
        data: data.to_vec(),
    };
    Some((chunk, HEADER + len))
}

/// Every whole frame of `buf`, and the number of bytes they take (the offset of the first incomplete frame).
pub fn decode_chunks(buf: &[u8]) -> (Vec<LogChunk>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((c, n)) = decode_chunk(&buf[pos..]) {
        out.push(c);
        pos += n;
    }
    (out, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(rank: u32, stream: LogStream, data: &[u8]) -> LogChunk {
        LogChunk { rank, attempt: 2, stream: stream as i32, data: data.to_vec() }
    }

    #[test]
    fn frames_roundtrip_and_partial_frames_wait() {
        let chunks = vec![chunk(0, LogStream::Stdout, b"hello\n"), chunk(3, LogStream::Stderr, &[0, 255, 7])];
        let mut buf = Vec::new();
        for c in &chunks {
            encode_chunk(&mut buf, c);
        }
        assert_eq!(buf.len(), 2 * HEADER + 9);
        // Little endian header: rank, attempt, stream, length.
        assert_eq!(&buf[..HEADER], &[0, 0, 0, 0, 2, 0, 0, 0, LogStream::Stdout as u8, 6, 0, 0, 0]);
        assert_eq!(decode_chunks(&buf), (chunks.clone(), buf.len()));
        // A cut anywhere inside the second frame yields the first only, and where it ends.
        for cut in HEADER + 6..buf.len() {
            assert_eq!(decode_chunks(&buf[..cut]), (chunks[..1].to_vec(), HEADER + 6), "cut at {cut}");
        }
        assert_eq!(decode_chunks(&[]), (vec![], 0));
        // An unknown stream number reads as stdout.
        let mut odd = buf[..HEADER + 6].to_vec();
        odd[8] = 99;
        assert_eq!(decode_chunk(&odd).unwrap().0.stream, LogStream::Stdout as i32);
        // A length that does not fit is an incomplete frame, not a panic.
        let mut huge = buf[..HEADER].to_vec();
        huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_chunks(&huge), (vec![], 0));
    }

    #[test]
    fn capped_frames_mark_the_limit_once() {
        let c = chunk(1, LogStream::Stdout, &[b'x'; 100]);
        let max = 300u64;
        let mut log = Vec::new();
        let mut closed = false;
        while !closed {
            assert!(!ends_with_marker(&log));
            let (f, marker) = capped_frame(log.len() as u64, max, &c).expect("below the limit");
            log.extend_from_slice(&f);
            closed = marker;
        }
        assert!(ends_with_marker(&log) && near_limit(log.len() as u64, max));
        let (chunks, used) = decode_chunks(&log);
        assert_eq!(used, log.len());
        // Two whole chunks fit in 300 bytes (2 * 113); the third would cross: the marker replaces it.
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert!(chunks[..2].iter().all(|x| x.data == c.data && !is_truncation_marker(x)));
        assert!(is_truncation_marker(&chunks[2]));
        assert_eq!((chunks[2].rank, chunks[2].attempt), (1, 2));
        assert_eq!(log.len(), 2 * 113 + MARKER_FRAME);
        assert!(capped_frame(max, max, &c).is_none());
        assert!(!near_limit(0, MAX_JOB_LOG) && near_limit(MAX_JOB_LOG - MAX_CHUNK as u64, MAX_JOB_LOG));
        // Empty and oversized chunks are never framed.
        assert!(capped_frame(0, max, &chunk(0, LogStream::Stdout, b"")).is_none());
        assert!(capped_frame(0, u64::MAX, &chunk(0, LogStream::Stdout, &vec![0; MAX_CHUNK + 1])).is_none());
        assert!(capped_frame(0, u64::MAX, &chunk(0, LogStream::Stdout, &vec![0; MAX_CHUNK])).is_some());
    }
}
