//! Calling the scheduler: any node serves the ML services (followers forward writes to the leader), so a failed
//! or unreachable node is simply skipped for the next one.
//!
//! Retry policy: transport errors, timeouts and retryable codes (UNAVAILABLE during an election, ...) move to the
//! next address (or to the leader a follower names in `aidos-leader`) at once; after a whole round of addresses
//! failed the SDK pauses (backoff 100 ms → 2 s) and starts another round, for up to [`RETRY_FOR`]. FAILED_PRECONDITION is returned at once as [`SdkError::Fenced`]; other non-retryable codes as
//! [`SdkError::Rpc`].

use std::future::Future;
use std::time::Duration;

use aidos_api::LEADER_METADATA_KEY;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::{Result, SdkError};

/// How long an RPC is retried across failures before giving up (a leader failover takes a few seconds).
pub const RETRY_FOR: Duration = Duration::from_secs(30);
/// Deadline of one attempt of one RPC.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub use aidos_api::contract::{is_retryable, normalize_addr};

pub(crate) struct Conn {
    addrs: Vec<String>,
    cur: usize,
    channel: Option<Channel>,
    retry_for: Duration,
}

impl Conn {
    pub(crate) fn new(addrs: &[String]) -> Conn {
        let mut v: Vec<String> = Vec::new();
        for a in addrs.iter().map(|a| normalize_addr(a)) {
            if !v.contains(&a) {
                v.push(a);
            }
        }
        Conn { addrs: v, cur: 0, channel: None, retry_for: RETRY_FOR }
    }

    #[cfg(test)]
    pub(crate) fn with_retry_for(mut self, d: Duration) -> Conn {
        self.retry_for = d;
        self
    }

    fn channel(&mut self) -> std::result::Result<Channel, String> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let addr = &self.addrs[self.cur];
        let ep = Endpoint::from_shared(addr.clone())
            .map_err(|e| format!("bad scheduler address {addr}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        let c = ep.connect_lazy();
        self.channel = Some(c.clone());
        Ok(c)
    }

    /// Moves to the next address (or to `hint` when it is a new leader address).
    fn advance(&mut self, hint: Option<String>) {
        self.channel = None;
        if let Some(h) = hint {
            match self.addrs.iter().position(|a| *a == h) {
                Some(i) => self.cur = i,
                None => {
                    self.addrs.push(h);
                    self.cur = self.addrs.len() - 1;
                }
            }
        } else {
            self.cur = (self.cur + 1) % self.addrs.len();
        }
    }

    /// Runs one unary RPC with the retry policy of the module docs. `f` builds the call from a channel; it may be
    /// invoked several times.
    pub(crate) async fn call<T, F, Fut>(&mut self, rpc: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = BACKOFF_MIN;
        let mut tried = 0usize;
        loop {
            let (last, hint) = match self.channel() {
                Err(e) => (e, None),
                Ok(ch) => match tokio::time::timeout(RPC_TIMEOUT, f(ch)).await {
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Ok(Err(st)) if st.code() == Code::FailedPrecondition => {
                        return Err(SdkError::Fenced(st.message().to_string()));
                    }
                    Ok(Err(st)) if !is_retryable(st.code()) => {
                        return Err(SdkError::Rpc { rpc, code: st.code(), message: st.message().to_string() });
                    }
                    Ok(Err(st)) => {
                        let hint = st
                            .metadata()
                            .get(LEADER_METADATA_KEY)
                            .and_then(|v| v.to_str().ok())
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(normalize_addr);
                        (format!("{}: {:?}: {}", self.addrs[self.cur], st.code(), st.message()), hint)
                    }
                    Err(_) => (format!("{}: no answer within {RPC_TIMEOUT:?}", self.addrs[self.cur]), None),
                },
            };
            self.advance(hint);
            let now = Instant::now();
            if now >= deadline {
                return Err(SdkError::Unavailable {
                    rpc,
                    secs: self.retry_for.as_secs(),
                    addrs: self.addrs.join(","),
                    last,
                });
            }
            // Every address gets one try per round (a redirect counts as one); the pause comes between rounds.
            tried += 1;
            if tried >= self.addrs.len() {
                tried = 0;
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_and_deduplicated() {
        let c = Conn::new(&["127.0.0.1:1".into(), "http://127.0.0.1:1/".into(), "https://h:2".into()]);
        assert_eq!(c.addrs, vec!["http://127.0.0.1:1".to_string(), "https://h:2".to_string()]);
    }

    #[test]
    fn gives_up_after_the_budget_naming_the_rpc_and_addresses() {
        // Nothing listens on these ports (bound then dropped).
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let (a, b) = (free(), free());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut c = Conn::new(&[a.clone(), b.clone()]).with_retry_for(Duration::from_millis(700));
        let t = std::time::Instant::now();
        let err = rt
            .block_on(c.call("RunService.ReportMetrics", |ch| async move {
                aidos_api::run_service_client::RunServiceClient::new(ch)
                    .report_metrics(aidos_api::v1::ReportMetricsRequest::default())
                    .await
            }))
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        let msg = err.to_string();
        assert!(matches!(err, SdkError::Unavailable { .. }), "{msg}");
        assert!(msg.contains("RunService.ReportMetrics") && msg.contains(&a) && msg.contains(&b), "{msg}");
    }
}
