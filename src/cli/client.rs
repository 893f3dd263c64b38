//! The CLI's scheduler client: the CLI's settings of the one leader-following client ([`aidos_api::client`]) and a
//! typed service client per call. Any node answers every call, so on a connection error or UNAVAILABLE (e.g.
//! during a leader election) a call moves to the next address, pausing between rounds, for [`RETRY_BUDGET`].
//! Also the CLI's presentation of scheduler errors ([`status_error`]).

use std::future::Future;
use std::ops::Deref;
use std::time::Duration;

use aidos_api::auth_service_client::AuthServiceClient;
use aidos_api::client::{AuthChannel, Config, Credentials};
use aidos_api::cluster_service_client::ClusterServiceClient;
use aidos_api::dataset_service_client::DatasetServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use aidos_api::model_service_client::ModelServiceClient;
use aidos_api::run_service_client::RunServiceClient;
use aidos_api::serve_service_client::ServeServiceClient;
use aidos_api::sweep_service_client::SweepServiceClient;
use anyhow::anyhow;
use tonic::{Code, Status};

pub use aidos_api::client::is_retryable;

/// How long one call keeps retrying across addresses before giving up.
const RETRY_BUDGET: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Large job lists exceed tonic's 4 MiB default.
const MAX_MESSAGE: usize = 256 << 20;

/// What every scheduler client of this process presents (set once from the global flags by the dispatcher;
/// `aidos up` sets its own admin token when none was given).
static CREDENTIALS: std::sync::RwLock<Option<Credentials>> = std::sync::RwLock::new(None);

/// Sets the credentials every [`Client`] made afterwards presents.
pub fn set_credentials(c: Credentials) {
    *CREDENTIALS.write().unwrap_or_else(|p| p.into_inner()) = Some(c);
}

/// The credentials [`Client`]s present.
pub fn credentials() -> Credentials {
    CREDENTIALS.read().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
}

/// The scheduler client of one CLI command; derefs to [`aidos_api::client::Client`] (`advance`, `known`, ...).
pub struct Client(aidos_api::client::Client);

impl Deref for Client {
    type Target = aidos_api::client::Client;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Client {
    pub fn new(addrs: &[String]) -> anyhow::Result<Self> {
        let cfg = Config {
            connect_timeout: CONNECT_TIMEOUT,
            budget: Some(RETRY_BUDGET),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_message: MAX_MESSAGE,
            credentials: credentials(),
            ..Config::default()
        };
        match aidos_api::client::Client::new(addrs, cfg) {
            Ok(c) => Ok(Client(c)),
            Err(e @ aidos_api::client::ClientError::NoAddress) => Err(anyhow!("{e} (--scheduler)")),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `f` against the current address, failing over to the others on retryable errors.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.0.call("scheduler call", f).await
    }

    /// [`Self::call`] with a JobService client.
    pub async fn job<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(JobServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(JobServiceClient::new(ch).max_decoding_message_size(self.max_message()))).await
    }

    /// [`Self::call`] with a ClusterService client.
    pub async fn cluster<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(ClusterServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(ClusterServiceClient::new(ch).max_decoding_message_size(self.max_message()))).await
    }

    /// [`Self::call`] with a DatasetService client.
    pub async fn datasets<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(DatasetServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| {
            f(DatasetServiceClient::new(ch)
                .max_decoding_message_size(self.max_message())
                .max_encoding_message_size(self.max_message()))
        })
        .await
    }

    /// [`Self::call`] with a RunService client.
    pub async fn runs<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(RunServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(RunServiceClient::new(ch).max_decoding_message_size(self.max_message()))).await
    }

    /// [`Self::call`] with a ModelService client.
    pub async fn models<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(ModelServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(ModelServiceClient::new(ch).max_decoding_message_size(self.max_message()))).await
    }

    /// [`Self::call`] with a SweepService client.
    pub async fn sweeps<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(SweepServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(SweepServiceClient::new(ch).max_decoding_message_size(self.max_message()))).await
    }

    /// [`Self::call`] with an AuthService client.
    pub async fn auth<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(AuthServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(AuthServiceClient::new(ch))).await
    }

    /// [`Self::call`] with an AuditService client.
    pub async fn audit<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(aidos_api::audit_service_client::AuditServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(aidos_api::audit_service_client::AuditServiceClient::new(ch))).await
    }

    /// [`Self::call`] with a ServeService client.
    pub async fn serve<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(ServeServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(|ch| f(ServeServiceClient::new(ch).max_decoding_message_size(self.max_message()))).await
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
