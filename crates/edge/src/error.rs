//! The agent's errors. Each names what was refused and why; none of them touches the running model.

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("control plane: {0}")]
    ControlPlane(String),
    /// The control plane refused this device (enrolment token, credential): retried, but worth a warning.
    #[error("control plane refused this device: {0}")]
    Refused(String),
    #[error("download of {artifact}: {why}")]
    Download { artifact: String, why: String },
    #[error("hash mismatch: artifact {expected} downloaded as {actual} ({bytes} bytes)")]
    HashMismatch { expected: String, actual: String, bytes: u64 },
    #[error("signature of deployment {deployment} does not verify against the pinned control-plane key")]
    BadSignature { deployment: String },
    #[error("cache full: need {need} bytes, {used} of {max} used")]
    CacheFull { need: u64, used: u64, max: u64 },
    #[error("disk full under {dir}: need {need} more bytes (+{headroom} kept free), {available} available")]
    DiskFull { dir: String, need: u64, available: u64, headroom: u64 },
    #[error("cache: {0}")]
    Cache(String),
    #[error("model {what}: {why}")]
    Model { what: String, why: String },
    #[error("health check failed for {what}: {why}")]
    HealthCheck { what: String, why: String },
}
