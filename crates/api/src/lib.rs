//! The aidos wire protocol, compiled once from `proto/`, plus the spec format users write (TOML) and its
//! validation, and the one leader-following scheduler client ([`client`]). Every process talks to every other
//! through these types.

pub mod auth;
pub mod client;
pub mod contract;
pub mod edge;
pub mod limits;
pub mod logframe;
pub mod spec;
pub mod sweep;
pub mod tls;

/// Generated protobuf and tonic types for `aidos.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("aidos.v1");
    include!(concat!(env!("OUT_DIR"), "/aidos.v1.serde.rs"));
}

pub use v1::*;

/// The encoded `FileDescriptorSet` of every aidos proto file: lets tests enumerate every service and method.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aidos_descriptors");

/// Every RPC of every aidos service, as gRPC paths (`/aidos.v1.JobService/Submit`), from [`FILE_DESCRIPTOR_SET`].
pub fn every_rpc() -> Vec<String> {
    rpcs_of(FILE_DESCRIPTOR_SET)
}

/// Every RPC of every service in an encoded `FileDescriptorSet`, as gRPC paths (`/package.Service/Method`).
pub fn rpcs_of(descriptors: &[u8]) -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(descriptors).expect("descriptors compiled by build.rs");
    let mut out = Vec::new();
    for f in set.file {
        for s in &f.service {
            for m in &s.method {
                out.push(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
            }
        }
    }
    out
}

/// Metadata key a follower sets on UNAVAILABLE answers to point at the current leader's address.
pub const LEADER_METADATA_KEY: &str = "aidos-leader";

/// Default address of the embedded scheduler (`aidos up`).
pub const DEFAULT_SCHEDULER_ADDR: &str = "127.0.0.1:7070";

/// HTTP/2 flow-control windows of every aidos gRPC connection, client and server side. h2's default of 64 KiB lets
/// a stream carry 64 KiB per round trip of WINDOW_UPDATEs: on a loaded 2-core machine that capped a blob download
/// through the blob service far below the store behind it. The windows are credit, not buffers: a reader that keeps
/// up holds nothing; one that does not holds at most the connection window.
pub const HTTP2_STREAM_WINDOW: u32 = 4 << 20;
/// See [`HTTP2_STREAM_WINDOW`]: the whole connection's window (its streams share it).
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame an aidos endpoint accepts (h2's default is 16 KiB): a blob message of 1 MiB crosses as a few
/// frames instead of 64, each processed once by both sides.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// Parses a model reference: `NAME` (the latest version), `NAME:VERSION` (versions start at 1) or `NAME@ALIAS`.
/// One parser for the CLI and the scheduler, so both accept and refuse the same references.
pub fn parse_model_ref(s: &str) -> Result<GetModelRequest, String> {
    let s = s.trim();
    if let Some((n, a)) = s.split_once('@') {
        if n.is_empty() || a.is_empty() {
            return Err(format!("`{s}`: expected NAME@ALIAS"));
        }
        return Ok(GetModelRequest { name: n.into(), version: 0, alias: a.into() });
    }
    if let Some((n, v)) = s.split_once(':') {
        let version: u32 = v
            .parse()
            .map_err(|_| format!("`{s}`: version `{v}` is not a number (expected NAME:VERSION, e.g. mnist:3)"))?;
        if version == 0 {
            return Err(format!("`{s}`: versions start at 1"));
        }
        return Ok(GetModelRequest { name: n.into(), version, alias: String::new() });
    }
    Ok(GetModelRequest { name: s.into(), version: 0, alias: String::new() })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs() {
        let r = |n: &str, v: u32, a: &str| GetModelRequest { name: n.into(), version: v, alias: a.into() };
        assert_eq!(parse_model_ref("m").unwrap(), r("m", 0, ""));
        assert_eq!(parse_model_ref("m:3").unwrap(), r("m", 3, ""));
        assert_eq!(parse_model_ref("m@prod").unwrap(), r("m", 0, "prod"));
        assert!(parse_model_ref("m:x").unwrap_err().contains("not a number"));
        assert!(parse_model_ref("m:0").unwrap_err().contains("versions start at 1"));
        assert!(parse_model_ref("@prod").unwrap_err().contains("NAME@ALIAS"));
    }
}
