use std::sync::Arc;

use aidos_api::v1::*;
use aidos_api::worker_service_server::WorkerService;
use tonic::{Request, Streaming};

use super::{Res, leader, ok};
use crate::core::Core;
use crate::leader::BoxStream;

/// The worker whose certificate authenticated this call (None: a token did, or plain TCP).
fn cert_worker<T>(r: &Request<T>) -> Option<String> {
    crate::auth::principal(r).ok().and_then(|(p, _)| {
        p.name.strip_prefix(crate::auth::CERT_WORKER_PREFIX).filter(|_| p.token_id == p.name).map(str::to_string)
    })
}

/// On a TLS cluster a worker is who its certificate names, and speaks only for itself.
fn speaks_for<T>(r: &Request<T>, worker_id: &str) -> Result<(), tonic::Status> {
    same_worker(cert_worker(r).as_deref(), worker_id)
}

fn same_worker(certified: Option<&str>, worker_id: &str) -> Result<(), tonic::Status> {
    match certified {
        Some(id) if id != worker_id => Err(tonic::Status::permission_denied(format!(
            "the certificate of worker {id} cannot act for worker {worker_id}"
        ))),
        _ => Ok(()),
    }
}

/// Served by the leader only; followers answer UNAVAILABLE with the leader's address (`aidos-leader`).
pub struct Workers(pub Arc<Core>);

#[tonic::async_trait]
impl WorkerService for Workers {
    async fn register(&self, r: Request<RegisterWorkerRequest>) -> Res<RegisterWorkerResponse> {
        speaks_for(&r, &r.get_ref().worker_id)?;
        ok(leader(&self.0)?.register_worker(r.into_inner()).await?)
    }

    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        speaks_for(&r, &r.get_ref().worker_id)?;
        ok(leader(&self.0)?.heartbeat(r.into_inner())?)
    }

    type AssignmentsStream = BoxStream<WorkerCommand>;
    async fn assignments(&self, r: Request<AssignmentsRequest>) -> Res<Self::AssignmentsStream> {
        speaks_for(&r, &r.get_ref().worker_id)?;
        ok(leader(&self.0)?.assignments(r.into_inner().worker_id)?)
    }

    async fn report_status(&self, r: Request<TaskStatusReport>) -> Res<ReportAck> {
        speaks_for(&r, &r.get_ref().worker_id)?;
        leader(&self.0)?.report_status(r.into_inner()).await?;
        ok(ReportAck {})
    }

    /// Every message of the stream speaks for the worker whose certificate opened it.
    async fn report_logs(&self, r: Request<Streaming<LogReport>>) -> Res<ReportAck> {
        use futures::StreamExt;
        let certified = cert_worker(&r);
        let stream =
            r.into_inner().map(move |m| m.and_then(|m| same_worker(certified.as_deref(), &m.worker_id).map(|_| m)));
        leader(&self.0)?.report_logs(stream).await?;
        ok(ReportAck {})
    }

    async fn join(&self, r: Request<JoinRequest>) -> Res<JoinResponse> {
        ok(leader(&self.0)?.join(r.into_inner()).await?)
    }

    /// Only over TLS, presenting the certificate being renewed (the auth layer checked it is valid and not
    /// revoked; apply checks again).
    async fn renew_cert(&self, r: Request<RenewCertRequest>) -> Res<JoinResponse> {
        use aidos_api::tls::{Identity, PeerCert};
        let presented = r.peer_certs().and_then(|c| c.first().and_then(|d| aidos_api::tls::peer_of(d)));
        let serial = match presented {
            Some(PeerCert { identity: Identity::Worker(id), serial, .. }) if id == r.get_ref().worker_id => serial,
            Some(PeerCert { identity, .. }) => {
                return Err(tonic::Status::permission_denied(format!(
                    "the certificate presented ({}) cannot renew worker {}'s",
                    identity.common_name(),
                    r.get_ref().worker_id
                )));
            }
            None => {
                return Err(tonic::Status::failed_precondition(
                    "a worker renews its certificate over TLS, presenting it (this call presented none)",
                ));
            }
        };
        ok(leader(&self.0)?.renew_worker_cert(r.into_inner(), serial).await?)
    }
}
