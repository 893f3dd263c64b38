//! The serving error type and its two wire forms: HTTP status + JSON body ([`ServeError::http_status`]) and gRPC
//! [`tonic::Status`] (the one `From` below). Both matches are exhaustive: a new variant must say how each
//! protocol shows it.

use aidos_runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("unknown model `{0}`")]
    ModelNotFound(String),
    #[error("model `{model}` has no version `{version}` loaded")]
    VersionNotFound { model: String, version: String },
    /// The request does not fit the model's signature or the protocol (names the field/tensor).
    #[error("{0}")]
    InvalidInput(String),
    /// A tensor or body larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The model's queue is full: retry later (HTTP 429 / RESOURCE_EXHAUSTED).
    #[error("model `{model}` is overloaded: {queued} requests queued (max_queue_size {capacity}); retry later")]
    QueueFull { model: String, queued: usize, capacity: usize },
    #[error("request timed out after {ms} ms ({stage})")]
    Timeout { ms: u64, stage: &'static str },
    /// The model's runtime failed on a batch.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The model is being unloaded or its executors stopped.
    #[error("model `{0}` is not available: {1}")]
    Unavailable(String, String),
    /// No key, or one this server does not accept (HTTP 401 / UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid key that may not make this request (HTTP 403 / PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// A key over its rate or in-flight limit (HTTP 429 with `Retry-After` / RESOURCE_EXHAUSTED with
    /// `retry-after-ms`).
    #[error("{message}")]
    OverLimit { message: String, retry_after_ms: u64 },
    /// A replica behind the gateway refused or failed the request; its status is passed on.
    #[error("replica {replica}: {}", status.message())]
    Replica { replica: String, status: tonic::Status },
}

impl ServeError {
    /// HTTP status of this error on the REST front.
    pub fn http_status(&self) -> u16 {
        match self {
            ServeError::ModelNotFound(_) | ServeError::VersionNotFound { .. } => 404,
            ServeError::InvalidInput(_) => 400,
            ServeError::TooLarge(_) => 413,
            ServeError::QueueFull { .. } => 429,
            ServeError::Timeout { .. } => 504,
            ServeError::Runtime(RuntimeError::Input(_)) => 400,
            ServeError::Runtime(
                RuntimeError::Load { .. } | RuntimeError::Run(_) | RuntimeError::Unavailable { .. },
            ) => 500,
            ServeError::Unavailable(..) => 503,
            ServeError::Unauthenticated(_) => 401,
            ServeError::PermissionDenied(_) => 403,
            ServeError::OverLimit { .. } => 429,
            ServeError::Replica { status, .. } => match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => 400,
                tonic::Code::NotFound => 404,
                tonic::Code::ResourceExhausted => 429,
                tonic::Code::DeadlineExceeded => 504,
                tonic::Code::Unavailable => 503,
                tonic::Code::Unauthenticated => 401,
                tonic::Code::PermissionDenied => 403,
                _ => 502,
            },
        }
    }
}

impl From<ServeError> for tonic::Status {
    fn from(e: ServeError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            ServeError::ModelNotFound(_) | ServeError::VersionNotFound { .. } => tonic::Status::not_found(msg),
            ServeError::InvalidInput(_) | ServeError::TooLarge(_) => tonic::Status::invalid_argument(msg),
            ServeError::QueueFull { .. } => tonic::Status::resource_exhausted(msg),
            ServeError::Timeout { .. } => tonic::Status::deadline_exceeded(msg),
            ServeError::Runtime(RuntimeError::Input(_)) => tonic::Status::invalid_argument(msg),
            ServeError::Runtime(
                RuntimeError::Load { .. } | RuntimeError::Run(_) | RuntimeError::Unavailable { .. },
            ) => tonic::Status::internal(msg),
            ServeError::Unavailable(..) => tonic::Status::unavailable(msg),
            ServeError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            ServeError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            ServeError::OverLimit { retry_after_ms, .. } => {
                let mut st = tonic::Status::resource_exhausted(msg);
                st.metadata_mut().insert(aidos_api::limits::RETRY_AFTER_METADATA, retry_after_ms.into());
                st
            }
            ServeError::Replica { status, .. } => tonic::Status::new(status.code(), msg),
        }
    }
}
