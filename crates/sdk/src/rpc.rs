//! Calling the scheduler: the SDK's settings of the one scheduler client ([`aidos_api::client`]), and its errors.
//!
//! Any node serves the ML services (followers forward writes to the leader), so a failed or unreachable node is
//! simply skipped for the next one, or for the leader a follower names in `aidos-leader`. After a whole round of
//! addresses failed the SDK pauses (backoff 100 ms → 2 s) and starts another round, for up to [`RETRY_FOR`]; a try
//! gets [`RPC_TIMEOUT`]. What is retried is the client's one rule ([`is_retryable`]: everything but a problem with
//! the request). FAILED_PRECONDITION is returned at once as [`SdkError::Fenced`]; other non-retryable codes as
//! [`SdkError::Rpc`]; a spent budget as [`SdkError::Unavailable`].

use std::future::Future;
use std::time::Duration;

use aidos_api::client::{AuthChannel, Client, Config, Credentials};
use tonic::{Code, Status};

use crate::env::ENV_SCHEDULER;
use crate::error::{Result, SdkError};

/// How long an RPC is retried across failures before giving up (a leader failover takes a few seconds).
pub const RETRY_FOR: Duration = Duration::from_secs(30);
/// Deadline of one attempt of one RPC.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub use aidos_api::client::{is_retryable, normalize_addr};

pub(crate) struct Conn {
    client: Client,
}

impl Conn {
    pub(crate) fn new(addrs: &[String], credentials: &Credentials) -> Result<Conn> {
        Conn::with_retry_for(addrs, credentials, RETRY_FOR)
    }

    pub(crate) fn with_retry_for(addrs: &[String], credentials: &Credentials, retry_for: Duration) -> Result<Conn> {
        let cfg = Config {
            connect_timeout: CONNECT_TIMEOUT,
            attempt_timeout: Some(RPC_TIMEOUT),
            budget: Some(retry_for),
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            credentials: credentials.clone(),
            ..Config::default()
        };
        let client = Client::new(addrs, cfg).map_err(|e| SdkError::BadEnv {
            var: ENV_SCHEDULER,
            value: addrs.join(","),
            problem: e.to_string(),
        })?;
        Ok(Conn { client })
    }

    /// Runs one unary RPC with the retry policy of the module docs. `f` builds the call from a channel; it may be
    /// invoked several times.
    pub(crate) async fn call<T, F, Fut>(&self, rpc: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let res = self
            .client
            .call(rpc, |ch| {
                let call = f(ch);
                async move { call.await.map(tonic::Response::into_inner) }
            })
            .await;
        res.map_err(|st| match st.code() {
            Code::FailedPrecondition => SdkError::Fenced(st.message().to_string()),
            _ if is_retryable(&st) => SdkError::Unavailable {
                rpc,
                secs: self.client.config().budget.unwrap_or_default().as_secs(),
                addrs: self.client.known().join(","),
                last: format!("{:?}: {}", st.code(), st.message()),
            },
            code => SdkError::Rpc { rpc, code, message: st.message().to_string() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_the_budget_naming_the_rpc_and_addresses() {
        // Nothing listens on these ports (bound then dropped).
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let (a, b) = (free(), free());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let c =
            Conn::with_retry_for(&[a.clone(), b.clone()], &Credentials::default(), Duration::from_millis(700)).unwrap();
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

    #[test]
    fn a_bad_address_names_the_variable() {
        let err = Conn::new(&["a b:1".into()], &Credentials::default()).err().expect("refused");
        assert!(matches!(err, SdkError::BadEnv { var: ENV_SCHEDULER, .. }), "{err}");
    }
}
