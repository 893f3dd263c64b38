//! Finding and following the scheduler leader: the worker's settings of the one scheduler client
//! ([`aidos_api::client`]), and its WorkerService adaptor.
//!
//! Worker RPCs are served only by the Raft leader. A follower answers `UNAVAILABLE`, with the leader's
//! address in the `aidos-leader` metadata key when it knows one. [`Connection`] is one shared
//! [`Client`]: every RPC in the worker goes through it, so one redirect or failure moves all of them, and
//! the leaders it learns from hints are kept ([`Client::known`]).
//!
//! The worker's limits: a unary try gets [`RPC_TIMEOUT`]; retryable failures are retried without a budget
//! (a worker never gives up on its leader), pausing 100 ms → 500 ms between rounds of addresses; HTTP/2
//! keep-alive notices a dead leader under the long-lived assignment and log streams.

use std::future::Future;
use std::ops::Deref;
use std::time::Duration;

use aidos_api::client::{AuthChannel, Client, Config, Credentials};
use aidos_api::worker_service_client::WorkerServiceClient;
use tonic::Status;

use crate::WorkerError;

pub use aidos_api::client::{Backoff, Failure, is_retryable, leader_hint, normalize_addr};

/// Deadline of one unary RPC attempt.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Capped low: a worker must find a new leader well within the heartbeat timeout (5 s by default).
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The worker's backoff for its own loops (re-registering, reopening streams): [`BACKOFF_MIN`] → [`BACKOFF_MAX`].
pub fn backoff() -> Backoff {
    Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
}

/// The worker's shared leader-following connection (see module docs); derefs to the [`Client`].
pub struct Connection(Client);

impl Deref for Connection {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl Connection {
    pub fn new(addrs: &[String], credentials: &Credentials) -> Result<Self, WorkerError> {
        let cfg = Config {
            connect_timeout: CONNECT_TIMEOUT,
            attempt_timeout: Some(RPC_TIMEOUT),
            budget: None,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            keep_alive: Some(KEEP_ALIVE),
            warn_on_retry: true,
            credentials: credentials.clone(),
            ..Config::default()
        };
        Client::new(addrs, cfg).map(Connection).map_err(|e| WorkerError::Config(e.to_string()))
    }

    /// A WorkerService client for the current address. Must be called inside a tokio runtime.
    pub fn client(&self) -> (String, WorkerServiceClient<AuthChannel>) {
        let (addr, channel) = self.0.channel();
        (addr, WorkerServiceClient::new(channel))
    }

    /// Runs a unary RPC against the leader until it succeeds or fails with a non-retryable status.
    /// `f` gets a fresh client for each try and must set its own per-request deadline ([`request`]).
    pub async fn unary<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(WorkerServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.0
            .call(what, |ch| {
                let call = f(WorkerServiceClient::new(ch));
                async move { call.await.map(tonic::Response::into_inner) }
            })
            .await
    }
}

/// A request with the standard unary deadline. The deadline is only a header for the server; the client
/// enforces it too ([`Config::attempt_timeout`]), so a call stuck on a dead leader's connection fails over.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(RPC_TIMEOUT);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_settings() {
        let c = Connection::new(&["a:1,b:2".into()], &Credentials::default()).unwrap();
        assert_eq!(c.known(), vec!["http://a:1".to_string(), "http://b:2".to_string()]);
        assert_eq!(c.config().budget, None);
        assert!(matches!(Connection::new(&[], &Credentials::default()), Err(WorkerError::Config(_))));
        let d: Vec<_> = {
            let mut b = backoff();
            (0..5).map(|_| b.next_delay().as_millis()).collect()
        };
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
    }
}
