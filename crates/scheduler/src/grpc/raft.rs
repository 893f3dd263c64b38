//! Raft RPCs from peers, decoded from typed V1 messages and handed to openraft.

use std::sync::Arc;

use aidos_api::raft_service_server::RaftService;
use aidos_api::v1 as pb;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Status};

use super::{Res, ok};
use crate::core::Core;
use crate::raft_types::{
    Malformed, entry_from_pb, log_id_to_pb, opt_log_id_from_pb, opt_log_id_to_pb, snapshot_meta_from_pb, vote_from_pb,
    vote_to_pb,
};

pub struct RaftRpc(pub Arc<Core>);

fn bad(m: Malformed) -> Status {
    Status::invalid_argument(m.to_string())
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(&self, r: Request<pb::AppendEntriesRequestV1>) -> Res<pb::AppendEntriesResponseV1> {
        let r = r.into_inner();
        let req = AppendEntriesRequest {
            vote: vote_from_pb(r.vote.as_ref().ok_or(Malformed("vote")).map_err(bad)?).map_err(bad)?,
            prev_log_id: opt_log_id_from_pb(&r.prev_log_id).map_err(bad)?,
            entries: r.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>().map_err(bad)?,
            leader_commit: opt_log_id_from_pb(&r.leader_commit).map_err(bad)?,
        };
        use pb::append_entries_response_v1::Result as R;
        let out = match self.0.raft.append_entries(req).await {
            Ok(AppendEntriesResponse::Success) => {
                pb::AppendEntriesResponseV1 { result: Some(R::Success(true)), error: String::new() }
            }
            Ok(AppendEntriesResponse::PartialSuccess(l)) => pb::AppendEntriesResponseV1 {
                result: Some(match l {
                    Some(l) => R::PartialSuccess(log_id_to_pb(&l)),
                    None => R::PartialSuccessNone(true),
                }),
                error: String::new(),
            },
            Ok(AppendEntriesResponse::Conflict) => {
                pb::AppendEntriesResponseV1 { result: Some(R::Conflict(true)), error: String::new() }
            }
            Ok(AppendEntriesResponse::HigherVote(v)) => {
                pb::AppendEntriesResponseV1 { result: Some(R::HigherVote(vote_to_pb(&v))), error: String::new() }
            }
            Err(e) => pb::AppendEntriesResponseV1 { result: None, error: e.to_string() },
        };
        ok(out)
    }

    async fn vote(&self, r: Request<pb::VoteRequestV1>) -> Res<pb::VoteResponseV1> {
        let r = r.into_inner();
        let req = VoteRequest {
            vote: vote_from_pb(r.vote.as_ref().ok_or(Malformed("vote")).map_err(bad)?).map_err(bad)?,
            last_log_id: opt_log_id_from_pb(&r.last_log_id).map_err(bad)?,
        };
        ok(match self.0.raft.vote(req).await {
            Ok(v) => pb::VoteResponseV1 {
                vote: Some(vote_to_pb(&v.vote)),
                vote_granted: v.vote_granted,
                last_log_id: opt_log_id_to_pb(&v.last_log_id),
                error: String::new(),
            },
            Err(e) => pb::VoteResponseV1 { error: e.to_string(), ..Default::default() },
        })
    }

    async fn install_snapshot(&self, r: Request<pb::InstallSnapshotRequestV1>) -> Res<pb::InstallSnapshotResponseV1> {
        let r = r.into_inner();
        let req = InstallSnapshotRequest {
            vote: vote_from_pb(r.vote.as_ref().ok_or(Malformed("vote")).map_err(bad)?).map_err(bad)?,
            meta: snapshot_meta_from_pb(r.meta.as_ref().ok_or(Malformed("meta")).map_err(bad)?).map_err(bad)?,
            offset: r.offset,
            data: r.data,
            done: r.done,
        };
        ok(match self.0.raft.install_snapshot(req).await {
            Ok(v) => pb::InstallSnapshotResponseV1 { vote: Some(vote_to_pb(&v.vote)), error: String::new() },
            Err(e) => pb::InstallSnapshotResponseV1 { vote: None, error: e.to_string() },
        })
    }
}
