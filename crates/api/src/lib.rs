//! The aidos wire protocol, compiled once from `proto/`, plus the spec format users write (TOML) and its
//! validation. Every process talks to every other through these types.

pub mod contract;
pub mod edge;
pub mod spec;

/// Generated protobuf and tonic types for `aidos.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("aidos.v1");
}

pub use v1::*;

/// Metadata key a follower sets on UNAVAILABLE answers to point at the current leader's address.
pub const LEADER_METADATA_KEY: &str = "aidos-leader";

/// Default address of the embedded scheduler (`aidos up`).
pub const DEFAULT_SCHEDULER_ADDR: &str = "127.0.0.1:7070";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl AttemptRef {
    /// A short printable name, `job/rank#attempt`.
    pub fn display(&self) -> String {
        format!("{}/{}#{}", self.job_id, self.rank, self.attempt)
    }
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl TaskState {
    /// Assigned or running: holds resources on its worker.
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running)
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Lost | TaskState::Cancelled)
    }
}
