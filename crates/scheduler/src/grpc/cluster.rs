use std::sync::Arc;

use aidos_api::cluster_service_server::ClusterService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, ok};
use crate::core::{Core, Route};
use crate::state::add;

pub struct Cluster(pub Arc<Core>);

/// This node's view of the cluster (answered locally by any node).
pub fn status(core: &Core) -> ClusterStatus {
    let m = core.raft.metrics().borrow().clone();
    let mem = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = mem.voter_ids().collect();
    let members = mem
        .nodes()
        .map(|(id, n)| SchedulerNode { id: *id, addr: n.addr.clone(), voter: voters.contains(id) })
        .collect();
    let a = core.state.read().expect("state lock");
    let count = |s: WorkerState| a.state.workers.values().filter(|w| w.state == s as i32).count() as u32;
    ClusterStatus {
        node_id: core.id,
        leader_id: m.current_leader.unwrap_or(0),
        leader_addr: m.current_leader.and_then(|l| mem.get_node(&l)).map(|n| n.addr.clone()).unwrap_or_default(),
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        members,
        state: format!("{:?}", m.state),
        workers_ready: count(WorkerState::Ready),
        workers_lost: count(WorkerState::Lost),
        jobs_total: a.state.jobs.len() as u64,
        jobs_active: (a.state.pending.len() + a.state.running.len()) as u64,
    }
}

#[tonic::async_trait]
impl ClusterService for Cluster {
    async fn status(&self, _: Request<ClusterStatusRequest>) -> Res<ClusterStatus> {
        ok(status(&self.0))
    }

    async fn add_node(&self, r: Request<AddNodeRequest>) -> Res<ClusterStatus> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.add_node(r).await?,
            Route::Forward(f) => f.add_node(r).await?,
        })
    }

    async fn remove_node(&self, r: Request<RemoveNodeRequest>) -> Res<ClusterStatus> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.remove_node(r.id).await?,
            Route::Forward(f) => f.remove_node(r).await?,
        })
    }

    async fn list_workers(&self, _: Request<ListWorkersRequest>) -> Res<ListWorkersResponse> {
        let a = self.0.state.read().expect("state lock");
        let alloc = a.state.allocated();
        let workers = a
            .state
            .workers
            .values()
            .map(|w| {
                let mut w = w.clone();
                let mut r = Resources::default();
                if let Some(x) = alloc.get(&w.id) {
                    add(&mut r, x);
                }
                w.allocated = Some(r);
                w
            })
            .collect();
        ok(ListWorkersResponse { workers })
    }
}
