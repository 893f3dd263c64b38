//! Readiness probes of serving replicas: a replica that stops answering (hung, not dead: a dead one is seen by
//! the supervisor as an exit) is killed, so that its job restarts it like any crash.
//!
//! A replica writes its endpoints to `replica.json` in its working directory once it serves
//! ([`aidos_api::contract::REPLICA_ENDPOINTS_FILE`]); it is probed from then on. Other tasks are never probed. Every
//! [`PROBE_EVERY`] the probe asks `GET /v2/health/ready` of the replica's HTTP front, allowing [`PROBE_TIMEOUT`]
//! for the status line; [`PROBE_FAILURES`] failures in a row end the watch with the reason. A replica that is
//! merely busy still answers: its HTTP front runs apart from its inference threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time between probes.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Time one probe may take, from connecting to the status line.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed probes in a row after which the replica counts as hung.
pub const PROBE_FAILURES: u32 = 3;

/// The HTTP address a replica in `workdir` serves on, once it has written its endpoints.
fn http_addr(workdir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(workdir.join(aidos_api::contract::REPLICA_ENDPOINTS_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["http"].as_str().map(str::to_string)
}

/// One readiness probe.
pub async fn probe(addr: &str) -> Result<(), String> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting: {e}"))?;
        s.write_all(b"GET /v2/health/ready HTTP/1.0\r\nHost: probe\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut line = [0u8; 12];
        s.read_exact(&mut line).await.map_err(|e| format!("reading the answer: {e}"))?;
        match &line[9..12] {
            b"200" => Ok(()),
            code => Err(format!("answered HTTP {}", String::from_utf8_lossy(code))),
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// Probes the replica in `workdir` until it fails [`PROBE_FAILURES`] probes in a row, then answers why. Pending
/// forever when `replica` is false (another kind of task) or the replica never writes its endpoints. Cancel-safe:
/// it holds nothing.
pub async fn watch(workdir: PathBuf, replica: bool) -> String {
    if !replica {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    loop {
        tick.tick().await;
        let dir = workdir.clone();
        let Ok(Some(addr)) = tokio::task::spawn_blocking(move || http_addr(&dir)).await else { continue };
        match probe(&addr).await {
            Ok(()) => failures = 0,
            Err(why) => {
                failures += 1;
                tracing::debug!("replica at {addr}: probe {failures} failed: {why}");
                if failures >= PROBE_FAILURES {
                    return format!("replica at {addr} failed {failures} readiness probes in a row (last: {why})");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_that_never_answers_fails_its_probes_and_the_watch_says_why() {
        // Accepts connections (as a stopped process's kernel does) but never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(aidos_api::contract::REPLICA_ENDPOINTS_FILE);
        std::fs::write(&file, format!(r#"{{"http":"{addr}","grpc":"{addr}"}}"#)).unwrap();
        let err = probe(&addr).await.unwrap_err();
        assert!(err.contains("no answer within"), "{err}");
        let why = tokio::time::timeout(Duration::from_secs(10), watch(dir.path().to_path_buf(), true)).await.unwrap();
        assert!(why.contains(&addr) && why.contains("3 readiness probes"), "{why}");
        drop(l);
    }

    #[tokio::test]
    async fn a_task_without_endpoints_is_never_probed() {
        let dir = tempfile::tempdir().unwrap();
        let r = tokio::time::timeout(Duration::from_millis(2500), watch(dir.path().to_path_buf(), true)).await;
        assert!(r.is_err());
    }
}
