//! Finding and following the scheduler leader.
//!
//! Worker RPCs are served only by the Raft leader. A follower answers `UNAVAILABLE`, with the leader's
//! address in the `aidos-leader` metadata key when it knows one. [`Connection`] keeps the list of known
//! addresses (configured ones plus every hinted leader) and the index of the one believed to be the
//! leader; every RPC in the worker goes through it, so one redirect or failure moves all of them.
//!
//! Invariants:
//! - Addresses are kept normalized (`http://host:port`, no trailing slash) so hints and configured
//!   addresses compare equal.
//! - Only the caller that observed a failure on the *current* address moves the cursor; concurrent
//!   failures against an address that was already abandoned do not rotate twice.
//! - Retryable errors (anything that may go away with a new leader or a moment's patience) are retried
//!   with backoff 100 ms → 500 ms; the rest are returned to the caller ([`is_retryable`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use aidos_api::LEADER_METADATA_KEY;
use aidos_api::worker_service_client::WorkerServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::WorkerError;

/// Deadline of one unary RPC attempt.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Capped low: a worker must find a new leader well within the heartbeat timeout (5 s by default).
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

pub use aidos_api::contract::{is_retryable, normalize_addr};

/// The leader address a follower put in the answer, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    let v = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?.trim();
    if v.is_empty() { None } else { Some(normalize_addr(v)) }
}

/// What the caller should do after a failed RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not retryable: give the status to the caller.
    Fatal,
    /// Switched to a hinted leader: retry right away.
    Redirected,
    /// Moved on (or stayed) after a transport/availability error: retry after backoff.
    Retry,
}

/// Exponential backoff 100 ms → 2 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

struct Inner {
    addrs: Vec<String>,
    current: usize,
    channels: HashMap<String, Channel>,
}

/// Shared leader-following connection (see module docs).
pub struct Connection {
    inner: Mutex<Inner>,
}

impl Connection {
    pub fn new(addrs: &[String]) -> Result<Self, WorkerError> {
        let mut list: Vec<String> = Vec::new();
        for a in addrs.iter().flat_map(|a| a.split(',')).map(str::trim).filter(|a| !a.is_empty()) {
            let n = normalize_addr(a);
            Endpoint::from_shared(n.clone())
                .map_err(|e| WorkerError::Config(format!("scheduler address `{a}`: {e}")))?;
            if !list.contains(&n) {
                list.push(n);
            }
        }
        if list.is_empty() {
            return Err(WorkerError::Config("no scheduler address given".into()));
        }
        Ok(Connection { inner: Mutex::new(Inner { addrs: list, current: 0, channels: HashMap::new() }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address currently believed to be the leader.
    pub fn current(&self) -> String {
        let g = self.lock();
        g.addrs[g.current].clone()
    }

    /// All known addresses (configured and hinted).
    pub fn known(&self) -> Vec<String> {
        self.lock().addrs.clone()
    }

    /// A client for the current address (channels are created lazily and cached per address). Must be
    /// called inside a tokio runtime.
    pub fn client(&self) -> (String, WorkerServiceClient<Channel>) {
        let mut g = self.lock();
        let addr = g.addrs[g.current].clone();
        let channel = match g.channels.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let ch = Endpoint::from_shared(addr.clone())
                    .expect("validated when added")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                g.channels.insert(addr.clone(), ch.clone());
                ch
            }
        };
        (addr, WorkerServiceClient::new(channel))
    }

    /// Records a failed RPC made against `used` and says what to do next: follow a leader hint, rotate
    /// to the next known address, or give up (not retryable).
    pub fn on_failure(&self, used: &str, status: &Status) -> Failure {
        if !is_retryable(status.code()) {
            return Failure::Fatal;
        }
        let mut g = self.lock();
        if let Some(hint) = leader_hint(status)
            && hint != used
            && Endpoint::from_shared(hint.clone()).is_ok()
        {
            let idx = match g.addrs.iter().position(|a| *a == hint) {
                Some(i) => i,
                None => {
                    tracing::info!("learned scheduler leader address {hint}");
                    g.addrs.push(hint.clone());
                    g.addrs.len() - 1
                }
            };
            if g.current != idx {
                tracing::debug!("following leader hint {used} -> {hint}");
                g.current = idx;
            }
            return Failure::Redirected;
        }
        // A transport error may leave a broken cached channel behind; a fresh one reconnects cleanly.
        if status.code() == Code::Unavailable && leader_hint(status).is_none() && is_transport_error(status) {
            g.channels.remove(used);
        }
        if g.addrs[g.current] == used && g.addrs.len() > 1 {
            g.current = (g.current + 1) % g.addrs.len();
        }
        Failure::Retry
    }

    /// Runs a unary RPC against the leader until it succeeds or fails with a non-retryable status.
    /// `f` gets a fresh client for each try and must set its own per-request deadline ([`request`]).
    pub async fn unary<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(WorkerServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Backoff::default();
        let mut failures = 0u32;
        let mut redirects = 0u32;
        loop {
            let (addr, client) = self.client();
            // The deadline set by `request` is only a header for the server: enforce it here too, so a call stuck
            // on a dead leader's connection fails (as a transport error: the channel is dropped and the next
            // address tried) instead of hanging until the leader's grace runs out.
            let res = match tokio::time::timeout(RPC_TIMEOUT, f(client)).await {
                Ok(r) => r,
                Err(_) => Err(Status::unavailable(format!("transport: no answer within {RPC_TIMEOUT:?}"))),
            };
            match res {
                Ok(resp) => {
                    if failures > 0 {
                        tracing::info!("{what}: succeeded against {addr} after {failures} failed tries");
                    }
                    return Ok(resp.into_inner());
                }
                Err(status) => match self.on_failure(&addr, &status) {
                    Failure::Fatal => return Err(status),
                    Failure::Redirected if redirects < 3 => redirects += 1,
                    Failure::Redirected | Failure::Retry => {
                        redirects = 0;
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(
                                "{what} via {addr} failed ({}: {}); retrying",
                                status.code(),
                                status.message()
                            );
                        } else {
                            tracing::debug!(
                                "{what} via {addr} failed ({}: {}); retrying",
                                status.code(),
                                status.message()
                            );
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                },
            }
        }
    }
}

fn is_transport_error(status: &Status) -> bool {
    let m = status.message();
    m.contains("transport") || m.contains("connect") || m.contains("not ready")
}

/// A request with the standard unary deadline.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(RPC_TIMEOUT);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn unavailable(hint: Option<&str>) -> Status {
        let mut s = Status::unavailable("not the leader");
        if let Some(h) = hint {
            s.metadata_mut().insert(LEADER_METADATA_KEY, MetadataValue::try_from(h).unwrap());
        }
        s
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalize_addr("http://h:1/"), "http://h:1");
        assert_eq!(normalize_addr("https://h:1"), "https://h:1");
    }

    #[test]
    fn follows_hints_and_rotates() {
        let c = Connection::new(&["a:1".into(), "b:2".into()]).unwrap();
        assert_eq!(c.current(), "http://a:1");
        // Unavailable without hint: rotate.
        assert_eq!(c.on_failure("http://a:1", &unavailable(None)), Failure::Retry);
        assert_eq!(c.current(), "http://b:2");
        // A stale failure against an address we already left does not rotate again.
        assert_eq!(c.on_failure("http://a:1", &unavailable(None)), Failure::Retry);
        assert_eq!(c.current(), "http://b:2");
        // A hint to an unknown address is learned and followed.
        assert_eq!(c.on_failure("http://b:2", &unavailable(Some("c:3"))), Failure::Redirected);
        assert_eq!(c.current(), "http://c:3");
        assert_eq!(c.known().len(), 3);
        // A hint to a known one does not duplicate it.
        assert_eq!(c.on_failure("http://c:3", &unavailable(Some("http://a:1"))), Failure::Redirected);
        assert_eq!(c.current(), "http://a:1");
        assert_eq!(c.known().len(), 3);
        // Non-retryable codes are fatal and do not move the cursor.
        assert_eq!(c.on_failure("http://a:1", &Status::failed_precondition("stale")), Failure::Fatal);
        assert_eq!(c.on_failure("http://a:1", &Status::not_found("nope")), Failure::Fatal);
        assert_eq!(c.current(), "http://a:1");
    }

    #[test]
    fn rejects_empty_config() {
        assert!(Connection::new(&[]).is_err());
        assert!(Connection::new(&[" ".into()]).is_err());
        assert_eq!(Connection::new(&["a:1,b:2".into()]).unwrap().known().len(), 2);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        let d: Vec<_> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
