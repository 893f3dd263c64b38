//! aidos-edge: the edge agent (see `agent` for the control loop, `download` for verified resumable downloads,
//! `cache` for what survives restarts, `telemetry` for the on-disk buffer). It reaches the control plane only over
//! gRPC (`aidos.v1.EdgeService`), links neither openraft nor the training stack, and serves with the same
//! runtimes and HTTP front as `aidos-serve` (tract by default; ort when built with it and a library is present).

pub mod agent;
pub mod args;
pub mod cache;
pub mod download;
pub mod error;
pub mod resident;
pub mod telemetry;

pub use agent::{AgentConfig, run};
pub use error::EdgeError;
