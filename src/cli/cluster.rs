//! `aidos cluster ...`: scheduler membership and workers.

use aidos_api::{
    AddNodeRequest, ClusterStatus, ClusterStatusRequest, ListWorkersRequest, RemoveNodeRequest, RevokeWorkerRequest,
};
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output};
use super::client::{Client, status_error};
use super::render::{self, print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Leader, term, members and counts of workers and jobs
    Status,
    /// Registered workers: state, capacity, allocation and labels
    Workers,
    /// Add a scheduler node to the cluster (as a voter unless --learner)
    AddNode(AddNodeArgs),
    /// Remove a scheduler node from the cluster
    RemoveNode(RemoveNodeArgs),
    /// Revoke every certificate issued to a worker (TLS clusters): it is cut off at its next call, and must join
    /// again with a new join token to come back
    RevokeWorker(RevokeWorkerArgs),
}

#[derive(Args, Debug)]
pub struct RevokeWorkerArgs {
    /// The worker's id (as `aidos cluster workers` shows it)
    #[arg(env = "AIDOS_REVOKE_WORKER_ID")]
    pub worker_id: String,
}

#[derive(Args, Debug)]
pub struct AddNodeArgs {
    /// Raft id of the new node
    #[arg(long, env = "AIDOS_ADD_NODE_ID")]
    pub id: u64,
    /// Address the new node advertises (host:port)
    #[arg(long, env = "AIDOS_ADD_NODE_ADDR")]
    pub addr: String,
    /// Add it as a non-voting learner only
    #[arg(long, env = "AIDOS_ADD_NODE_LEARNER")]
    pub learner: bool,
}

#[derive(Args, Debug)]
pub struct RemoveNodeArgs {
    /// Raft id of the node to remove
    #[arg(long, env = "AIDOS_REMOVE_NODE_ID")]
    pub id: u64,
}

pub async fn run(g: &Global, cmd: ClusterCmd) -> anyhow::Result<()> {
    let client = Client::new(&g.scheduler)?;
    match cmd {
        ClusterCmd::Status => {
            let st = client
                .cluster(|mut c| async move { c.status(ClusterStatusRequest {}).await.map(|r| r.into_inner()) })
                .await
                .map_err(|e| status_error(e, ""))?;
            show_status(g.output, &st);
        }
        ClusterCmd::Workers => {
            let resp = client
                .cluster(|mut c| async move { c.list_workers(ListWorkersRequest {}).await.map(|r| r.into_inner()) })
                .await
                .map_err(|e| status_error(e, ""))?;
            if g.output == Output::Json {
                print_json(&json!({ "workers": resp.workers.iter().map(render::worker_json).collect::<Vec<_>>() }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = resp
                .workers
                .iter()
                .map(|w| {
                    vec![
                        w.id.clone(),
                        render::worker_state(w.state).to_string(),
                        w.hostname.clone(),
                        render::resources(w.capacity.as_ref()),
                        render::resources(w.allocated.as_ref()),
                        if w.max_tasks == 0 { "-".into() } else { w.max_tasks.to_string() },
                        render::kv_list(&w.labels),
                        render::age(w.registered_at_ms),
                    ]
                })
                .collect();
            print_table(&["ID", "STATE", "HOST", "CAPACITY", "ALLOCATED", "MAX TASKS", "LABELS", "AGE"], &rows);
        }
        ClusterCmd::AddNode(a) => {
            anyhow::ensure!(a.id > 0, "--id must be > 0");
            let req = AddNodeRequest { id: a.id, addr: a.addr.clone(), voter: !a.learner };
            let st = client
                .cluster(|mut c| {
                    let req = req.clone();
                    async move { c.add_node(req).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            if g.output == Output::Table {
                println!("added node {} ({}) as a {}", a.id, a.addr, if a.learner { "learner" } else { "voter" });
            }
            show_status(g.output, &st);
        }
        ClusterCmd::RemoveNode(a) => {
            let st = client
                .cluster(
                    |mut c| async move { c.remove_node(RemoveNodeRequest { id: a.id }).await.map(|r| r.into_inner()) },
                )
                .await
                .map_err(|e| status_error(e, &format!("node {}", a.id)))?;
            if g.output == Output::Table {
                println!("removed node {}", a.id);
            }
            show_status(g.output, &st);
        }
        ClusterCmd::RevokeWorker(a) => {
            let id = a.worker_id.clone();
            let r = client
                .cluster(|mut c| {
                    let req = RevokeWorkerRequest { worker_id: id.clone() };
                    async move { c.revoke_worker(req).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, &format!("worker {}", a.worker_id)))?;
            if g.output == Output::Json {
                print_json(&serde_json::to_value(&r)?);
            } else {
                println!("revoked {} certificate(s) of worker {}", r.certs.len(), a.worker_id);
            }
        }
    }
    Ok(())
}

fn show_status(out: Output, st: &ClusterStatus) {
    if out == Output::Json {
        print_json(&render::cluster_status_json(st));
        return;
    }
    let leader =
        if st.leader_id == 0 { "none known".to_string() } else { format!("{} ({})", st.leader_id, st.leader_addr) };
    println!("answered by: node {} ({})", st.node_id, st.state);
    println!("leader:      {leader}");
    println!("term:        {}", st.term);
    println!("log:         last index {}, applied {}", st.last_log_index, st.last_applied);
    println!("workers:     {} ready, {} lost", st.workers_ready, st.workers_lost);
    println!("jobs:        {} total, {} active", st.jobs_total, st.jobs_active);
    println!();
    let rows: Vec<Vec<String>> = st
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                if m.id == st.leader_id { "leader" } else { "" }.to_string(),
            ]
        })
        .collect();
    print_table(&["ID", "ADDR", "ROLE", "LEADER"], &rows);
}
