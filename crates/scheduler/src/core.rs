//! The node's shared core: Raft handle, applied state, leader memory, channels to other nodes, and `propose`.
//! It knows nothing of the paths built on it: the leader path (`leader`), the forwarding layer (`forward`), the
//! gRPC adapters (`grpc`) and the leader's loops (`loops`) all hold an `Arc<Core>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aidos_api::v1::{
    ClusterStatus, CommandResultV1, CommandV1, SchedulerNode, SubmitRequest, SubmitResponse, WorkerState,
    command_v1::Command,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

use crate::SchedulerConfig;
use crate::edge_keys::EdgeCore;
use crate::error::SchedulerError;
use crate::network::lazy_channel;
use crate::queries;
use crate::raft_types::{NodeId, Raft};
use crate::store::state_machine::SharedState;
use crate::task_logs::TaskLogs;

/// One submission waiting for the proposer to batch it into a Raft entry.
pub struct SubmitItem {
    pub req: SubmitRequest,
    pub reply: oneshot::Sender<Result<SubmitResponse, SchedulerError>>,
}

pub struct Core {
    pub id: NodeId,
    pub raft: Raft,
    pub state: SharedState,
    pub version: watch::Receiver<u64>,
    pub cfg: SchedulerConfig,
    /// Leader memory: when each worker was last heard from. Never written to the Raft log.
    pub liveness: Mutex<HashMap<String, Instant>>,
    /// Leader memory: each serving replica's (job id) last reported requests in flight, and when (ms). Never
    /// written to the Raft log (`autoscale`).
    pub loads: Mutex<HashMap<String, (f64, i64)>>,
    pub submits: mpsc::Sender<SubmitItem>,
    pub logs: TaskLogs,
    /// Edge signing key, artifact store and device liveness (see `edge_keys`).
    pub edge: EdgeCore,
    /// The blob store this node serves (`BlobService`, edge downloads); None: none configured.
    pub blobs: Option<Arc<dyn aidos_blob::BlobStore>>,
    /// Leader memory: orders the blob collector's deletes against commits of new references (see `gc`).
    pub gc: crate::gc::RefGate,
    /// Audit records this node saw and has not yet handed to the leader (`audit`).
    pub audit: crate::audit::AuditSink,
    /// The cluster CA and this node's client identity, when the node serves TLS.
    pub tls: Option<Arc<NodeTls>>,
    channels: Mutex<HashMap<String, Channel>>,
}

/// What a node that serves TLS holds beside its listener's certificate.
pub struct NodeTls {
    /// Issues workers' certificates (`WorkerService.Join`).
    pub ca: aidos_api::tls::Ca,
    /// What this node trusts and presents when it calls its peers (its node certificate).
    pub client: aidos_api::tls::ClientTls,
    pub worker_cert_lifetime: std::time::Duration,
    pub device_cert_lifetime: std::time::Duration,
}

impl Core {
    pub fn new(
        raft: Raft,
        state: SharedState,
        version: watch::Receiver<u64>,
        cfg: SchedulerConfig,
        submits: mpsc::Sender<SubmitItem>,
        logs: TaskLogs,
        edge: EdgeCore,
    ) -> Self {
        Self {
            id: cfg.node_id,
            raft,
            state,
            version,
            cfg,
            liveness: Mutex::new(HashMap::new()),
            loads: Mutex::new(HashMap::new()),
            submits,
            logs,
            edge,
            blobs: None,
            gc: crate::gc::RefGate::default(),
            audit: crate::audit::AuditSink::default(),
            tls: None,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Serves `blobs` (the node's blob store: `BlobService`, edge downloads).
    pub fn with_blobs(mut self, blobs: Option<Arc<dyn aidos_blob::BlobStore>>) -> Self {
        self.blobs = blobs;
        self
    }

    /// Serves TLS with `tls`'s CA (issuing workers' certificates) and presents its client identity to peers.
    pub fn with_tls(mut self, tls: Option<Arc<NodeTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// The CA, when this node serves TLS.
    pub fn ca(&self) -> Option<&NodeTls> {
        self.tls.as_deref()
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.id)
    }

    /// The address of node `id` in the current membership.
    pub fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    pub fn leader_addr(&self) -> Option<String> {
        self.leader_id().and_then(|id| self.addr_of(id))
    }

    /// A (cached, lazily connected) channel to another node.
    pub fn channel(&self, addr: &str) -> Result<Channel, SchedulerError> {
        let mut m = self.channels.lock().expect("channels lock");
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let c = lazy_channel(addr, self.tls.as_ref().map(|t| &t.client))
            .map_err(|e| SchedulerError::Unavailable(format!("bad leader address {addr}: {e}")))?;
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// This node's view of the cluster: membership and Raft progress, worker and job counts.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = mem.voter_ids().collect();
        let members = mem
            .nodes()
            .map(|(id, n)| SchedulerNode { id: *id, addr: n.addr.clone(), voter: voters.contains(id) })
            .collect();
        let a = self.state.read().expect("state lock");
        ClusterStatus {
            node_id: self.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr: m.current_leader.and_then(|l| mem.get_node(&l)).map(|n| n.addr.clone()).unwrap_or_default(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
            state: format!("{:?}", m.state),
            workers_ready: queries::count_workers(&a.state, WorkerState::Ready),
            workers_lost: queries::count_workers(&a.state, WorkerState::Lost),
            jobs_total: a.state.jobs.by_id.len() as u64,
            jobs_active: (a.state.jobs.pending.len() + a.state.jobs.running.len()) as u64,
        }
    }

    /// Proposes a command and waits until it is committed on a quorum and applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandResultV1, SchedulerError> {
        let cmd = CommandV1 { now_ms: aidos_api::now_ms(), command: Some(command) };
        match self.raft.client_write(cmd).await {
            Ok(resp) => {
                let r = resp.data;
                if r.error.is_empty() { Ok(r) } else { Err(SchedulerError::from_refusal(r.error_code, r.error)) }
            }
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(SchedulerError::NotLeader { leader: f.leader_node.as_ref().map(|n| n.addr.clone()) }),
                None => Err(SchedulerError::Unavailable(format!("raft: {e}"))),
            },
        }
    }
}
