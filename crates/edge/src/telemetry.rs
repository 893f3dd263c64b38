//! Inference telemetry: counted by a middleware on the local server, closed into one record per interval, buffered
//! on disk (`telemetry.jsonl`, at most [`MAX_BUFFERED`] records; the oldest are dropped) and uploaded with the next
//! successful sync, which removes what the control plane accepted. Survives restarts and offline periods.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use aidos_api::v1::TelemetryRecord;
use serde::{Deserialize, Serialize};

/// Upper bounds (ms) of the latency buckets; the last bucket is +inf.
pub const BUCKETS_MS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0];
pub const MAX_BUFFERED: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub start_ms: i64,
    pub end_ms: i64,
    pub model: String,
    pub version: u32,
    pub requests: u64,
    pub errors: u64,
    pub latency_buckets: Vec<u64>,
    pub latency_sum_ms: f64,
}

impl From<Record> for TelemetryRecord {
    fn from(r: Record) -> TelemetryRecord {
        TelemetryRecord {
            start_ms: r.start_ms,
            end_ms: r.end_ms,
            model: r.model,
            version: r.version,
            requests: r.requests,
            errors: r.errors,
            latency_buckets: r.latency_buckets,
            latency_sum_ms: r.latency_sum_ms,
        }
    }
}

pub struct Telemetry {
    open: Mutex<Record>,
    file: PathBuf,
    /// Serializes file rewrites.
    file_lock: Mutex<()>,
}

impl Telemetry {
    pub fn new(file: PathBuf) -> Telemetry {
        Telemetry { open: Mutex::new(fresh(String::new(), 0)), file, file_lock: Mutex::new(()) }
    }

    /// Counts one inference request.
    pub fn observe(&self, started: Instant, ok: bool) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut r = self.open.lock().unwrap();
        r.requests += 1;
        if !ok {
            r.errors += 1;
        }
        let b = BUCKETS_MS.iter().position(|ub| ms <= *ub).unwrap_or(BUCKETS_MS.len());
        r.latency_buckets[b] += 1;
        r.latency_sum_ms += ms;
    }

    /// Closes the open interval (labelled with the model now serving) into the on-disk buffer, if it counted
    /// anything, and opens the next.
    pub fn roll(&self, model: &str, version: u32) -> std::io::Result<()> {
        let mut closed = {
            let mut r = self.open.lock().unwrap();
            std::mem::replace(&mut *r, fresh(model.to_string(), version))
        };
        if closed.requests == 0 {
            return Ok(());
        }
        closed.end_ms = aidos_api::now_ms();
        if closed.model.is_empty() {
            closed.model = model.to_string();
            closed.version = version;
        }
        let _g = self.file_lock.lock().unwrap();
        let mut all = self.read_locked();
        all.push(closed);
        if all.len() > MAX_BUFFERED {
            let drop = all.len() - MAX_BUFFERED;
            all.drain(..drop);
        }
        self.write_locked(&all)
    }

    /// Buffered records, oldest first (at most `n`).
    pub fn pending(&self, n: usize) -> Vec<Record> {
        let _g = self.file_lock.lock().unwrap();
        self.read_locked().into_iter().take(n).collect()
    }

    /// Drops the `n` oldest records (uploaded).
    pub fn ack(&self, n: usize) -> std::io::Result<()> {
        let _g = self.file_lock.lock().unwrap();
        let all = self.read_locked();
        self.write_locked(&all[n.min(all.len())..])
    }

    fn read_locked(&self) -> Vec<Record> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn write_locked(&self, all: &[Record]) -> std::io::Result<()> {
        let mut text = String::new();
        for r in all {
            text.push_str(&serde_json::to_string(r).expect("record serializes"));
            text.push('\n');
        }
        crate::cache::write_atomic(&self.file, text.as_bytes()).map_err(std::io::Error::other)
    }
}

fn fresh(model: String, version: u32) -> Record {
    Record {
        start_ms: aidos_api::now_ms(),
        model,
        version,
        latency_buckets: vec![0; BUCKETS_MS.len() + 1],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_in_the_buffer_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let t = Telemetry::new(dir.path().join("t.jsonl"));
        t.observe(Instant::now(), true);
        t.observe(Instant::now(), false);
        t.roll("m", 3).unwrap();
        t.roll("m", 3).unwrap(); // nothing counted: no record
        let again = Telemetry::new(dir.path().join("t.jsonl"));
        let p = again.pending(10);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].requests, p[0].errors, p[0].model.as_str(), p[0].version), (2, 1, "m", 3));
        again.ack(1).unwrap();
        assert!(again.pending(10).is_empty());
    }
}
