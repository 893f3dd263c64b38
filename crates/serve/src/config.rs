//! Plain configuration structs (the binary crate layers flags, env and files on top).

use std::net::SocketAddr;
use std::time::Duration;

/// Dynamic batching of one model version. See [`crate::batcher`] for how the fields interact.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Most rows (samples) in one batch; a single request with more rows is refused.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch once an executor is free.
    pub max_queue_delay: Duration,
    /// Batch sizes dispatched at once when reached and nothing else is waiting (e.g. `[8, 16, 32]`).
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests allowed to wait; one more is refused at once (HTTP 429 / RESOURCE_EXHAUSTED).
    pub max_queue_size: usize,
    /// Executors running batches in parallel (each on its own thread).
    pub instances: usize,
    /// Per-request deadline from arrival to answer; expired requests are dropped before compute.
    pub request_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 32,
            max_queue_delay: Duration::from_micros(500),
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            instances: 1,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl BatchConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err("max_batch_size: must be at least 1".into());
        }
        if self.max_queue_size == 0 {
            return Err("max_queue_size: must be at least 1".into());
        }
        if self.instances == 0 || self.instances > 256 {
            return Err("instances: must be between 1 and 256".into());
        }
        if let Some(p) = self.preferred_batch_sizes.iter().find(|p| **p == 0 || **p > self.max_batch_size) {
            return Err(format!("preferred_batch_sizes: {p} is not within 1..={}", self.max_batch_size));
        }
        if self.request_timeout.is_zero() {
            return Err("request_timeout: must be positive".into());
        }
        Ok(())
    }
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (HTTP) or message (gRPC), bytes.
    pub max_request_bytes: usize,
    /// Largest single input tensor, bytes of element data.
    pub max_tensor_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request_bytes: 64 << 20, max_tensor_bytes: 16 << 20 }
    }
}

/// Where the server listens (what it serves, its limits and name are [`crate::ServerState`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// Serve both fronts over TLS with this certificate (`--tls-cert`/`--tls-key`); None: plain TCP.
    pub tls: Option<aidos_api::tls::ServerTls>,
}

impl ServerConfig {
    /// Plain TCP on `http` and `grpc`.
    pub fn plain(http: SocketAddr, grpc: SocketAddr) -> ServerConfig {
        ServerConfig { http, grpc, tls: None }
    }
}
