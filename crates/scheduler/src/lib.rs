//! aidos control plane (skeleton: being implemented).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Placement strategy used when a job does not pick one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    BinPack,
    Spread,
}

/// Everything one scheduler node needs. Plain data: the binary layers flags, env and files onto it.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This node's Raft id (> 0).
    pub node_id: u64,
    /// Where the gRPC server binds (all services on one port).
    pub listen: SocketAddr,
    /// The address other nodes and workers dial to reach this node; empty: `listen`.
    pub advertise: String,
    /// redb files (raft log, vote, state machine) and leader-side task logs live here.
    pub data_dir: PathBuf,
    /// Initial voters (id -> address), this node included. Used once, to initialize an empty cluster: the node
    /// with the lowest id initializes. Empty: a single-node cluster of this node.
    pub initial_members: BTreeMap<u64, String>,
    /// A worker silent for this long is declared lost.
    pub worker_timeout: Duration,
    /// How often workers should heartbeat.
    pub heartbeat_interval: Duration,
    pub default_strategy: Strategy,
}

impl SchedulerConfig {
    pub fn single_node(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            node_id: 1,
            listen,
            advertise: String::new(),
            data_dir,
            initial_members: BTreeMap::new(),
            worker_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(500),
            default_strategy: Strategy::BinPack,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("not implemented yet")]
    Todo,
}

/// A running scheduler node.
pub struct SchedulerNode {
    pub local_addr: SocketAddr,
}

impl SchedulerNode {
    /// Starts the node: opens storage, binds `listen`, joins or initializes the cluster.
    pub async fn start(_cfg: SchedulerConfig) -> Result<SchedulerNode, SchedulerError> {
        Err(SchedulerError::Todo)
    }
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// Stops serving and closes storage cleanly.
    pub async fn shutdown(self) {}
}
