//! The scheduler's errors, and their one conversion to the wire (`tonic::Status`).

use aidos_api::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// A report for an attempt that is no longer current (its fencing token is stale).
    #[error("{0}")]
    Stale(String),
    /// This node is not the leader; `leader` is the leader's address when known.
    #[error("not the leader{}", .leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_else(|| "; no leader is elected yet".into()))]
    NotLeader { leader: Option<String> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The caller did not prove who it is (a device credential that does not match).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (an enrolment without the right token).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A call forwarded to the leader failed there: its status passes through unchanged.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
}

impl From<redb::Error> for SchedulerError {
    fn from(e: redb::Error) -> Self {
        SchedulerError::Storage(e.to_string())
    }
}

impl From<aidos_api::auth::Unauthenticated> for SchedulerError {
    fn from(e: aidos_api::auth::Unauthenticated) -> Self {
        SchedulerError::Unauthenticated(e.to_string())
    }
}

impl SchedulerError {
    /// A refusal carried in a `CommandResultV1` (code + message) as an error.
    pub fn from_refusal(code: u32, message: String) -> Self {
        match tonic::Code::from(code as i32) {
            tonic::Code::NotFound => SchedulerError::NotFound(message),
            tonic::Code::FailedPrecondition => SchedulerError::Stale(message),
            tonic::Code::Unauthenticated => SchedulerError::Unauthenticated(message),
            _ => SchedulerError::InvalidArgument(message),
        }
    }
}

impl From<SchedulerError> for tonic::Status {
    fn from(e: SchedulerError) -> Self {
        use tonic::{Code, Status};
        let msg = e.to_string();
        match e {
            SchedulerError::Storage(_) | SchedulerError::Raft(_) | SchedulerError::Io(_) => {
                Status::new(Code::Internal, msg)
            }
            SchedulerError::NotFound(_) => Status::new(Code::NotFound, msg),
            SchedulerError::InvalidArgument(_) | SchedulerError::InvalidSpec(_) => {
                Status::new(Code::InvalidArgument, msg)
            }
            SchedulerError::Stale(_) => Status::new(Code::FailedPrecondition, msg),
            SchedulerError::NotLeader { leader } => {
                let mut s = Status::new(Code::Unavailable, msg);
                if let Some(l) = leader.and_then(|l| l.parse().ok()) {
                    s.metadata_mut().insert(aidos_api::LEADER_METADATA_KEY, l);
                }
                s
            }
            SchedulerError::Unavailable(_) => Status::new(Code::Unavailable, msg),
            SchedulerError::Unauthenticated(_) => Status::new(Code::Unauthenticated, msg),
            SchedulerError::PermissionDenied(_) => Status::new(Code::PermissionDenied, msg),
            SchedulerError::Remote(s) => s,
        }
    }
}
