//! A scheduler client over a list of addresses: any node answers every call, so on a connection error or
//! UNAVAILABLE (e.g. during a leader election) we move to the next address, with a short backoff, for a bounded
//! time.

use std::future::Future;
use std::time::{Duration, Instant};

use aidos_api::cluster_service_client::ClusterServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use anyhow::anyhow;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long one call keeps retrying across addresses before giving up.
const RETRY_BUDGET: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Large job lists exceed tonic's 4 MiB default.
const MAX_MESSAGE: usize = 256 << 20;

pub struct Client {
    addrs: Vec<String>,
    current: usize,
    channel: Option<Channel>,
}

impl Client {
    pub fn new(addrs: &[String]) -> anyhow::Result<Self> {
        let addrs: Vec<String> = addrs.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
        if addrs.is_empty() {
            anyhow::bail!("no scheduler address given (--scheduler)");
        }
        for a in &addrs {
            endpoint(a).map_err(|s| anyhow!("{}", s.message()))?;
        }
        Ok(Self { addrs, current: 0, channel: None })
    }

    /// Drops the current connection and moves on to the next address (after a stream broke, say).
    pub fn advance(&mut self) {
        self.channel = None;
        self.current = (self.current + 1) % self.addrs.len();
    }

    async fn channel(&mut self) -> Result<Channel, Status> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let addr = &self.addrs[self.current];
        let ch = endpoint(addr)?
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to scheduler at {addr}: {}", error_chain(&e))))?;
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    /// Runs `f` against the current address, failing over to the others on retryable errors.
    pub async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut failures: u32 = 0;
        loop {
            let res = match self.channel().await {
                Ok(ch) => f(ch).await,
                Err(e) => Err(e),
            };
            let st = match res {
                Ok(v) => return Ok(v),
                Err(st) if is_retryable(&st) => st,
                Err(st) => return Err(st),
            };
            failures += 1;
            tracing::debug!(addr = %self.addrs[self.current], code = ?st.code(), "scheduler call failed: {}", st.message());
            if Instant::now() >= deadline {
                return Err(st);
            }
            match leader_hint(&st) {
                Some(hint) => self.use_addr(hint),
                None => self.advance(),
            }
            // Back off a little once every address has been tried.
            let round = failures / self.addrs.len() as u32;
            if round > 0 {
                let delay = Duration::from_millis(50u64 << round.min(5)).min(Duration::from_secs(1));
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(delay.min(left)).await;
            }
        }
    }

    /// [`Self::call`] with a JobService client.
    pub async fn job<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(JobServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(JobServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE))).await
    }

    /// [`Self::call`] with a ClusterService client.
    pub async fn cluster<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(ClusterServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(ClusterServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE))).await
    }

    /// [`Self::call`] with a DatasetService client.
    pub async fn datasets<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(aidos_api::dataset_service_client::DatasetServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| {
            f(aidos_api::dataset_service_client::DatasetServiceClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE))
        })
        .await
    }

    /// [`Self::call`] with a RunService client.
    pub async fn runs<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(aidos_api::run_service_client::RunServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| {
            f(aidos_api::run_service_client::RunServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE))
        })
        .await
    }

    /// [`Self::call`] with a ModelService client.
    pub async fn models<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(aidos_api::model_service_client::ModelServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| {
            f(aidos_api::model_service_client::ModelServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE))
        })
        .await
    }

    /// [`Self::call`] with a ServeService client.
    pub async fn serve<T, F, Fut>(&mut self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(aidos_api::serve_service_client::ServeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| {
            f(aidos_api::serve_service_client::ServeServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE))
        })
        .await
    }

    fn use_addr(&mut self, addr: String) {
        self.channel = None;
        match self.addrs.iter().position(|a| *a == addr) {
            Some(i) => self.current = i,
            None if endpoint(&addr).is_ok() => {
                self.addrs.push(addr);
                self.current = self.addrs.len() - 1;
            }
            None => self.current = (self.current + 1) % self.addrs.len(),
        }
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, Status> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Endpoint::from_shared(uri)
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
        .map_err(|e| Status::invalid_argument(format!("bad scheduler address `{addr}`: {e}")))
}

/// The leader address a follower may attach to an UNAVAILABLE answer.
fn leader_hint(st: &Status) -> Option<String> {
    if st.code() != Code::Unavailable {
        return None;
    }
    let v = st.metadata().get(aidos_api::LEADER_METADATA_KEY)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Unavailable, or a broken connection that tonic reports under another code.
pub fn is_retryable(st: &Status) -> bool {
    match st.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            let m = st.message().to_ascii_lowercase();
            ["transport error", "connection", "h2 protocol error", "broken pipe", "stream closed"]
                .iter()
                .any(|s| m.contains(s))
        }
        _ => false,
    }
}

/// A stream error that a reconnect cannot fix.
pub fn is_final(st: &Status) -> bool {
    matches!(
        st.code(),
        Code::NotFound
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::FailedPrecondition
            | Code::OutOfRange
    )
}

/// Turns a gRPC status into the error the user sees. `what` names the object, e.g. `job j-12`.
pub fn status_error(st: Status, what: &str) -> anyhow::Error {
    match st.code() {
        Code::NotFound if !what.is_empty() => anyhow!("{what} not found"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound => {
            anyhow!("{}", st.message())
        }
        Code::Unavailable => anyhow!("scheduler unavailable: {}", st.message()),
        code => anyhow!("{}: {}", code.description(), st.message()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
