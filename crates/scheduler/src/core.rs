//! The node's shared core: Raft handle, applied state, leader memory, and the routing decision that splits
//! every client call into the leader path ([`LeaderHandler`]) or the forwarding path ([`Forwarder`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aidos_api::v1::{CommandResultV1, CommandV1, SubmitRequest, SubmitResponse, command_v1::Command};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

use crate::SchedulerConfig;
use crate::error::SchedulerError;
use crate::forwarder::Forwarder;
use crate::leader::LeaderHandler;
use crate::network::lazy_channel;
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
    pub submits: mpsc::Sender<SubmitItem>,
    pub logs: TaskLogs,
    /// Edge signing key, artifact store and device liveness (see `leader_edge`).
    pub edge: crate::leader_edge::EdgeCore,
    channels: Mutex<HashMap<String, Channel>>,
}

/// Where a client call goes: handled here (this node leads) or forwarded to the leader.
pub enum Route {
    Leader(LeaderHandler),
    Forward(Forwarder),
}

impl Core {
    pub fn new(
        raft: Raft,
        state: SharedState,
        version: watch::Receiver<u64>,
        cfg: SchedulerConfig,
        submits: mpsc::Sender<SubmitItem>,
        logs: TaskLogs,
        edge: crate::leader_edge::EdgeCore,
    ) -> Self {
        Self {
            id: cfg.node_id,
            raft,
            state,
            version,
            cfg,
            liveness: Mutex::new(HashMap::new()),
            submits,
            logs,
            edge,
            channels: Mutex::new(HashMap::new()),
        }
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
        let c =
            lazy_channel(addr).map_err(|e| SchedulerError::Unavailable(format!("bad leader address {addr}: {e}")))?;
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Picks the path for a client call.
    pub fn route(self: &Arc<Self>) -> Result<Route, SchedulerError> {
        match self.leader_id() {
            Some(id) if id == self.id => Ok(Route::Leader(LeaderHandler::new(self.clone()))),
            Some(id) => {
                let addr = self.addr_of(id).ok_or(SchedulerError::NotLeader { leader: None })?;
                Ok(Route::Forward(Forwarder::new(self.channel(&addr)?)))
            }
            None => Err(SchedulerError::NotLeader { leader: None }),
        }
    }

    /// For leader-only services (workers): this node's leader handler, or NotLeader naming the leader.
    pub fn require_leader(self: &Arc<Self>) -> Result<LeaderHandler, SchedulerError> {
        if self.is_leader() {
            Ok(LeaderHandler::new(self.clone()))
        } else {
            Err(SchedulerError::NotLeader { leader: self.leader_addr() })
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
