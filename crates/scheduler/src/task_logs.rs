//! Task output kept by the leader: one append-only file per job of framed chunks
//! `[rank u32][attempt u32][stream u8][len u32][data]` (little endian).
//!
//! Limits: one chunk is at most [`MAX_CHUNK`] bytes (workers send ≤ 64 KiB); a job's log stops growing at
//! [`MAX_JOB_LOG`] bytes and a marker says so. Logs live on the node that was leader when they arrived: after a
//! failover, output reported to the old leader is not visible through the new one.

use std::path::{Path, PathBuf};

use aidos_api::v1::{LogChunk, LogStream};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

pub const MAX_CHUNK: usize = 1 << 20;
pub const MAX_JOB_LOG: u64 = 256 << 20;
const HEADER: usize = 13;

#[derive(Debug, Clone)]
pub struct TaskLogs {
    dir: PathBuf,
}

impl TaskLogs {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
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
        if c.data.is_empty() || c.data.len() > MAX_CHUNK {
            return Ok(());
        }
        let mut f = tokio::fs::OpenOptions::new().create(true).append(true).open(&p).await?;
        let len = f.metadata().await?.len();
        if len >= MAX_JOB_LOG {
            return Ok(());
        }
        let data: &[u8] =
            if len + c.data.len() as u64 > MAX_JOB_LOG { b"\n[aidos: log size limit reached]\n" } else { &c.data };
        let mut buf = Vec::with_capacity(HEADER + data.len());
        buf.extend_from_slice(&c.rank.to_le_bytes());
        buf.extend_from_slice(&c.attempt.to_le_bytes());
        buf.push(c.stream as u8);
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(data);
        f.write_all(&buf).await?;
        Ok(())
    }

    /// Reads whole chunks from `offset`; returns them and the offset after the last whole chunk.
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
        f.take(8 << 20).read_to_end(&mut buf).await?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos + HEADER <= buf.len() {
            let h = &buf[pos..pos + HEADER];
            let len = u32::from_le_bytes(h[9..13].try_into().expect("4 bytes")) as usize;
            if pos + HEADER + len > buf.len() {
                break;
            }
            out.push(LogChunk {
                rank: u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")),
                attempt: u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
                stream: LogStream::try_from(h[8] as i32).unwrap_or(LogStream::Stdout) as i32,
                data: buf[pos + HEADER..pos + HEADER + len].to_vec(),
            });
            pos += HEADER + len;
        }
        Ok((out, offset + pos as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
