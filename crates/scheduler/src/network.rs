//! Raft transport: openraft's `RaftNetwork` over tonic, with typed V1 messages.

use std::time::Duration;

use aidos_api::raft_service_client::RaftServiceClient;
use aidos_api::v1 as pb;
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::raft_types::{
    Malformed, NodeId, TypeConfig, entry_to_pb, log_id_from_pb, opt_log_id_from_pb, opt_log_id_to_pb,
    snapshot_meta_to_pb, vote_from_pb, vote_to_pb,
};

/// Largest Raft message, in bytes (append batches and snapshot chunks stay well under it).
pub const MAX_RAFT_MESSAGE: usize = 64 << 20;

/// Dials the other nodes, presenting the cluster's root token (and, on a TLS cluster, the node's certificate).
pub struct Network {
    pub credentials: aidos_api::auth::Credentials,
}

pub struct Peer {
    target: NodeId,
    client: RaftServiceClient<aidos_api::auth::AuthChannel>,
}

/// A lazily connected channel to node `addr`, over TLS presenting `tls`'s certificate when given.
pub fn lazy_channel(addr: &str, tls: Option<&aidos_api::tls::ClientTls>) -> Result<Channel, tonic::transport::Error> {
    let ep = Endpoint::from_shared(aidos_api::contract::normalize_addr(addr))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .initial_stream_window_size(aidos_api::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(aidos_api::HTTP2_CONNECTION_WINDOW)
        .max_frame_size(aidos_api::HTTP2_MAX_FRAME_SIZE)
        .http2_keep_alive_interval(Duration::from_secs(5));
    // Over TLS each new connection presents the node's certificate current at its handshake (rotated in place).
    Ok(match tls {
        Some(t) => ep.connect_with_connector_lazy(t.connector()),
        None => ep.connect_lazy(),
    })
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        // An invalid address fails every call with Unreachable rather than at construction.
        let tls = self.credentials.tls.as_ref();
        let ch = lazy_channel(&node.addr, tls).unwrap_or_else(|_| lazy_channel("127.0.0.1:1", None).expect("valid"));
        // Nodes prove to each other that they are nodes with the cluster's root token and, on a TLS cluster, with
        // their node certificates (the receiving auth layer checks both).
        let client = RaftServiceClient::new(aidos_api::auth::with_credentials(ch, &self.credentials))
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        Peer { target, client }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn status_err<E: std::error::Error>(s: tonic::Status) -> RpcErr<E> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

fn malformed<E: std::error::Error>(m: Malformed) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&m))
}

/// The peer answered with a Raft error (it is shutting down or hit a fatal storage error).
fn remote<E: std::error::Error>(target: NodeId, msg: String) -> RpcErr<E> {
    tracing::warn!(target, "raft peer refused: {msg}");
    RPCError::RemoteError(RemoteError::new(target, RaftError::Fatal(openraft::error::Fatal::Panicked)))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        opt: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let msg = pb::AppendEntriesRequestV1 {
            vote: Some(vote_to_pb(&req.vote)),
            prev_log_id: opt_log_id_to_pb(&req.prev_log_id),
            entries: req.entries.iter().map(entry_to_pb).collect(),
            leader_commit: opt_log_id_to_pb(&req.leader_commit),
        };
        let mut r = tonic::Request::new(msg);
        r.set_timeout(opt.hard_ttl());
        let resp = self.client.append_entries(r).await.map_err(status_err)?.into_inner();
        use pb::append_entries_response_v1::Result as R;
        match resp.result {
            Some(R::Success(_)) => Ok(AppendEntriesResponse::Success),
            Some(R::PartialSuccess(l)) => {
                Ok(AppendEntriesResponse::PartialSuccess(Some(log_id_from_pb(&l).map_err(malformed)?)))
            }
            Some(R::PartialSuccessNone(_)) => Ok(AppendEntriesResponse::PartialSuccess(None)),
            Some(R::Conflict(_)) => Ok(AppendEntriesResponse::Conflict),
            Some(R::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(vote_from_pb(&v).map_err(malformed)?)),
            None => Err(remote(self.target, resp.error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        opt: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let msg = pb::InstallSnapshotRequestV1 {
            vote: Some(vote_to_pb(&req.vote)),
            meta: Some(snapshot_meta_to_pb(&req.meta)),
            offset: req.offset,
            data: req.data,
            done: req.done,
        };
        let mut r = tonic::Request::new(msg);
        r.set_timeout(opt.hard_ttl());
        let resp = self.client.install_snapshot(r).await.map_err(status_err)?.into_inner();
        match resp.vote {
            Some(v) if resp.error.is_empty() => {
                Ok(InstallSnapshotResponse { vote: vote_from_pb(&v).map_err(malformed)? })
            }
            _ => Err(remote(self.target, resp.error)),
        }
    }

    async fn vote(&mut self, req: VoteRequest<NodeId>, opt: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let msg =
            pb::VoteRequestV1 { vote: Some(vote_to_pb(&req.vote)), last_log_id: opt_log_id_to_pb(&req.last_log_id) };
        let mut r = tonic::Request::new(msg);
        r.set_timeout(opt.hard_ttl());
        let resp = self.client.vote(r).await.map_err(status_err)?.into_inner();
        match resp.vote {
            Some(v) if resp.error.is_empty() => Ok(VoteResponse {
                vote: vote_from_pb(&v).map_err(malformed)?,
                vote_granted: resp.vote_granted,
                last_log_id: opt_log_id_from_pb(&resp.last_log_id).map_err(malformed)?,
            }),
            _ => Err(remote(self.target, resp.error)),
        }
    }
}
