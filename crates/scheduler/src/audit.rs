//! The audit log's recording side: which calls are recorded ([`auditable`]), the node's buffer of records not yet
//! replicated ([`AuditSink`]), the loop that hands them to the leader ([`run`]), and the pure read ([`list`]).
//! The records themselves are a replicated domain (`state::audit`).
//!
//! What is recorded: every call of a method that changes something (rule Write, ProjectAdmin or ClusterAdmin in
//! `auth::access`, less the two admin reads: listing tokens and the log itself), allowed or refused, except the telemetry tasks send while they run (metrics, checkpoints, load
//! and endpoint reports, ring rendezvous): those are the job's own doing, recorded by its submission. Refusals
//! over a token's rate limit are not recorded (a flood of them would flood the log; the limiter counts them).
//!
//! Invariants:
//! - A call is recorded once: a refusal by the node that refused it; an executed call by the node that executed
//!   it (the leader, for a call a follower relayed: `via = "relayed"`, `peer` as the relaying node reported it).
//! - Nothing waits on the log: the auth layer pushes into a bounded buffer ([`MAX_PENDING`]; beyond it records are
//!   counted and dropped, and the next flush records how many); [`run`] flushes it every [`FLUSH_EVERY`]. Records
//!   in the buffer of a node that dies are lost (at most [`FLUSH_EVERY`] of them); what was appended is replicated.
//! - `peer`: the TCP peer of a gRPC call; for the node's HTTP APIs the client's address as the HTTP server saw it
//!   (the `aidos-peer` header the HTTP layer sets, trusted only on in-process calls, which have no TCP peer); for a
//!   relayed call, the address the relaying node put in that header followed by `(relayed by <its TCP address>)`
//!   (a client can pose as a relaying node, but not hide its own address).
//! - Anonymous refusals are capped per flush ([`MAX_ANONYMOUS_PER_FLUSH`], the rest counted in one record); a
//!   batch the leader refuses for good is dropped, not retried (it would block every later record).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aidos_api::auth::Access;
use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{AppendAuditRequest, AppendAuditV1, AuditRecord, ListAuditRequest};
use tokio::sync::watch;
use tonic::codegen::http;

use crate::core::Core;
use crate::error::SchedulerError;

/// Records a node holds before they are replicated; more are dropped (and counted).
pub const MAX_PENDING: usize = 4096;
/// How often a node hands its records to the leader.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Header carrying the client's address on in-process calls (the HTTP APIs) and on calls relayed to the leader.
pub const PEER_HEADER: &str = "aidos-peer";
/// Most records one `List` answers.
pub const MAX_LIST: usize = 1000;

/// Is a call of `path` (whose rule is `access`) recorded? Pure.
pub fn auditable(path: &str, access: Access) -> bool {
    // Reads that need an admin's rule: not mutations.
    const ADMIN_READS: [&str; 2] = ["/aidos.v1.AuthService/ListTokens", "/aidos.v1.AuditService/List"];
    const TELEMETRY: [&str; 5] = [
        "/aidos.v1.RunService/ReportMetrics",
        "/aidos.v1.RunService/RecordCheckpoint",
        "/aidos.v1.ServeService/ReportLoad",
        "/aidos.v1.ServeService/ReportEndpoint",
        "/aidos.v1.JobService/JoinRing",
    ];
    // A worker's join and a device's enrolment are mutations (they may use up a join token) that the tokens in
    // the request authorize, not the auth layer; a worker's renewal issues a certificate.
    matches!(
        path,
        "/aidos.v1.WorkerService/Join" | "/aidos.v1.EdgeService/Enroll" | "/aidos.v1.WorkerService/RenewCert"
    ) || matches!(access, Access::Write | Access::ProjectAdmin | Access::ClusterAdmin)
        && !TELEMETRY.contains(&path)
        && !ADMIN_READS.contains(&path)
}

/// The client's address as this node sees it: the TCP peer of a network call; for an in-process call (no TCP
/// peer: the HTTP APIs) or a call relayed by another node, the [`PEER_HEADER`] it carries.
pub fn peer_of<B>(req: &http::Request<B>) -> String {
    let relayed = req.headers().contains_key(crate::forward::FORWARDED_HEADER);
    let tcp = req.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|i| i.remote_addr());
    let claimed = || req.headers().get(PEER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    match tcp {
        Some(a) if !relayed => a.to_string(),
        // What the relaying node said, and who said it (a client can claim to be a relaying node).
        Some(a) => format!("{} (relayed by {a})", claimed()),
        None => claimed(),
    }
}

/// How a call reached this node: `"grpc"`, `"http"` (in process, from the node's HTTP APIs) or `"relayed"`.
pub fn via_of<B>(req: &http::Request<B>) -> &'static str {
    if req.headers().contains_key(crate::forward::FORWARDED_HEADER) {
        "relayed"
    } else if req.extensions().get::<tonic::transport::server::TcpConnectInfo>().is_some() {
        "grpc"
    } else {
        "http"
    }
}

pub use crate::state::audit::bounded;

/// Refusals of calls that proved no identity (no token, a malformed or unknown one) recorded one by one per flush;
/// beyond it they are counted, and the count recorded, so an anonymous flood cannot push the log's other records
/// out faster than this.
pub const MAX_ANONYMOUS_PER_FLUSH: u64 = 64;

/// A node's records not yet handed to the leader.
#[derive(Default)]
pub struct AuditSink {
    pending: Mutex<Vec<AuditRecord>>,
    dropped: AtomicU64,
    anonymous: AtomicU64,
}

impl AuditSink {
    pub fn push(&self, r: AuditRecord) {
        if !r.allowed && r.code == "Unauthenticated" {
            let n = self.anonymous.fetch_add(1, Ordering::Relaxed);
            if n >= MAX_ANONYMOUS_PER_FLUSH {
                return;
            }
        }
        let mut p = self.pending.lock().expect("audit lock");
        if p.len() < MAX_PENDING {
            p.push(r);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Vec<AuditRecord> {
        std::mem::take(&mut *self.pending.lock().expect("audit lock"))
    }

    /// Puts records that could not be handed over back in front (as many as fit).
    fn put_back(&self, mut records: Vec<AuditRecord>) {
        let mut p = self.pending.lock().expect("audit lock");
        let room = MAX_PENDING.saturating_sub(p.len());
        if records.len() > room {
            let lost = records.len() - room;
            self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            records.drain(..lost);
        }
        records.append(&mut p);
        *p = records;
    }
}

/// An executed call's record, pushed when its answer's code is known ([`Pending::finish`]), or as `Cancelled`
/// when the call's future is dropped first (the caller went away or its deadline passed: the change may still be
/// applied, so it must not go unrecorded).
pub struct Pending {
    core: Arc<Core>,
    record: Option<AuditRecord>,
}

impl Pending {
    pub fn new(core: Arc<Core>, record: Option<AuditRecord>) -> Pending {
        Pending { core, record }
    }

    pub fn finish(&mut self, code: String) {
        if let Some(mut r) = self.record.take() {
            r.code = code;
            self.core.audit.push(r);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.code = code_name(tonic::Code::Cancelled);
            r.reason = "the caller went away before the answer (the change may have been applied)".into();
            self.core.audit.push(r);
        }
    }
}

/// Hands the node's records to the leader every [`FLUSH_EVERY`] until `stop`.
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => {},
            _ = stop.changed() => return,
        }
        let mut records = core.audit.take();
        let anonymous = core.audit.anonymous.swap(0, Ordering::Relaxed);
        if anonymous > MAX_ANONYMOUS_PER_FLUSH {
            records.push(AuditRecord {
                at_ms: aidos_api::now_ms(),
                node: core.id,
                action: "audit/unauthenticated".into(),
                code: "Unauthenticated".into(),
                reason: format!(
                    "{} more refusals of calls without a valid token in {} ms, not recorded one by one",
                    anonymous - MAX_ANONYMOUS_PER_FLUSH,
                    FLUSH_EVERY.as_millis()
                ),
                ..Default::default()
            });
        }
        let dropped = core.audit.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            records.push(AuditRecord {
                at_ms: aidos_api::now_ms(),
                node: core.id,
                action: "audit/dropped".into(),
                code: "ResourceExhausted".into(),
                reason: format!("{dropped} records dropped: more than {MAX_PENDING} waited on this node"),
                ..Default::default()
            });
        }
        if records.is_empty() {
            continue;
        }
        for chunk in records.chunks(crate::state::audit::MAX_RECORDS_PER_APPEND) {
            match hand_over(&core, chunk.to_vec()).await {
                Ok(()) => {}
                // No leader yet, or it cannot be reached: kept for the next flush.
                Err(e @ (SchedulerError::NotLeader { .. } | SchedulerError::Unavailable(_))) => {
                    tracing::debug!("audit: handing {} records to the leader: {e}", chunk.len());
                    core.audit.put_back(chunk.to_vec());
                }
                Err(SchedulerError::Remote(s)) if s.code() == tonic::Code::Unavailable => {
                    core.audit.put_back(chunk.to_vec());
                }
                // Refused for good: retrying the same batch would block every later record.
                Err(e) => tracing::warn!("audit: {} records refused by the leader, dropped: {e}", chunk.len()),
            }
        }
    }
}

/// Appends `records` through the leader: proposed here when this node leads, else sent to the leader's
/// `AuditService.Append` with the root token.
async fn hand_over(core: &Core, records: Vec<AuditRecord>) -> Result<(), SchedulerError> {
    if core.is_leader() {
        return append(core, records).await;
    }
    let addr = core.leader_addr().ok_or(SchedulerError::NotLeader { leader: None })?;
    let creds = aidos_api::auth::Credentials::token(core.cfg.root_token.clone());
    let ch = aidos_api::auth::with_credentials(core.channel(&addr)?, &creds);
    aidos_api::audit_service_client::AuditServiceClient::new(ch)
        .append(AppendAuditRequest { records })
        .await
        .map(|_| ())
        .map_err(SchedulerError::Remote)
}

/// The leader's side of an append: stamps the retention bound and proposes.
pub async fn append(core: &Core, records: Vec<AuditRecord>) -> Result<(), SchedulerError> {
    let retention = core.cfg.audit_retention;
    let retain_after_ms = if retention.is_zero() { 0 } else { aidos_api::now_ms() - retention.as_millis() as i64 };
    core.propose(Command::AppendAudit(AppendAuditV1 { records, retain_after_ms })).await.map(|_| ())
}

/// The records `req` asks for, newest first: of `project` only, or of every project (or `req.project`) when
/// `every_project` (a cluster-wide admin). Pure.
pub fn list<'a>(
    records: impl DoubleEndedIterator<Item = &'a AuditRecord>,
    req: &ListAuditRequest,
    project: &str,
    every_project: bool,
) -> Vec<AuditRecord> {
    let limit = match req.limit as usize {
        0 => 100,
        n => n.min(MAX_LIST),
    };
    let project = if every_project { req.project.as_str() } else { project };
    records
        .rev()
        .filter(|r| project.is_empty() || r.project == project)
        .filter(|r| req.user.is_empty() || r.principal == req.user || r.token_id == req.user)
        .filter(|r| req.action.is_empty() || r.action.contains(&req.action))
        .filter(|r| req.since_ms == 0 || r.at_ms >= req.since_ms)
        .filter(|r| req.until_ms == 0 || r.at_ms <= req.until_ms)
        .filter(|r| !req.denied_only || !r.allowed)
        .take(limit)
        .cloned()
        .collect()
}

/// The gRPC code's name of a response (`grpc-status` of a trailers-only answer; none: `Ok`, the status of a
/// successful unary call is in its trailers).
pub fn code_of<B>(resp: &http::Response<B>) -> String {
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    code_name(code)
}

pub fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: i64, who: &str, project: &str, action: &str, allowed: bool) -> AuditRecord {
        AuditRecord {
            at_ms,
            principal: who.into(),
            project: project.into(),
            action: action.into(),
            allowed,
            ..Default::default()
        }
    }

    #[test]
    fn mutations_are_recorded_and_reads_and_telemetry_are_not() {
        assert!(auditable("/aidos.v1.JobService/Submit", Access::Write));
        assert!(auditable("/aidos.v1.AuthService/RevokeToken", Access::ProjectAdmin));
        assert!(auditable("/aidos.v1.EdgeService/Enroll", Access::Public), "it may use up a join token");
        assert!(!auditable("/aidos.v1.EdgeService/Sync", Access::Device), "a device's periodic call");
        assert!(auditable("/aidos.v1.ClusterService/AddNode", Access::ClusterAdmin));
        assert!(!auditable("/aidos.v1.JobService/List", Access::Read));
        assert!(!auditable("/aidos.v1.WorkerService/Heartbeat", Access::Worker));
        assert!(auditable("/aidos.v1.WorkerService/RenewCert", Access::Worker), "it issues a certificate");
        assert!(!auditable("/aidos.v1.RunService/ReportMetrics", Access::Write));
        assert!(!auditable("/aidos.v1.ServeService/ReportLoad", Access::Write));
        assert!(!auditable("/aidos.v1.AuditService/List", Access::ProjectAdmin));
    }

    #[test]
    fn a_list_is_newest_first_within_the_project_and_the_filters() {
        let all = [
            rec(1, "ann", "a", "/aidos.v1.JobService/Submit", true),
            rec(2, "bob", "b", "/aidos.v1.JobService/Submit", true),
            rec(3, "eve", "a", "/aidos.v1.JobService/Cancel", false),
            rec(4, "ann", "a", "/aidos.v1.ServeService/Deploy", true),
        ];
        let at = |v: Vec<AuditRecord>| v.iter().map(|r| r.at_ms).collect::<Vec<_>>();
        let q = ListAuditRequest::default();
        assert_eq!(at(list(all.iter(), &q, "a", false)), [4, 3, 1]);
        assert_eq!(at(list(all.iter(), &q, "a", true)), [4, 3, 2, 1], "a cluster-wide admin sees every project");
        let only_b = ListAuditRequest { project: "b".into(), ..Default::default() };
        assert_eq!(at(list(all.iter(), &only_b, "a", false)), [4, 3, 1], "others cannot ask for another project");
        assert_eq!(at(list(all.iter(), &only_b, "a", true)), [2]);
        let q = |f: fn(&mut ListAuditRequest)| {
            let mut r = ListAuditRequest::default();
            f(&mut r);
            at(list(all.iter(), &r, "a", false))
        };
        assert_eq!(q(|r| r.user = "ann".into()), [4, 1]);
        assert_eq!(q(|r| r.action = "JobService".into()), [3, 1]);
        assert_eq!(q(|r| r.denied_only = true), [3]);
        assert_eq!(q(|r| r.since_ms = 2), [4, 3]);
        assert_eq!(q(|r| r.until_ms = 3), [3, 1]);
        assert_eq!(q(|r| r.limit = 1), [4]);
    }

    #[test]
    fn anonymous_refusals_are_capped_per_flush_and_records_are_cut_when_made() {
        let sink = AuditSink::default();
        let anon =
            || AuditRecord { code: "Unauthenticated".into(), ..rec(1, "", "p".repeat(10_000).as_str(), "s", false) };
        for _ in 0..MAX_ANONYMOUS_PER_FLUSH + 10 {
            sink.push(bounded(anon()));
        }
        sink.push(rec(2, "vic", "a", "s", false));
        let p = sink.take();
        assert_eq!(p.len() as u64, MAX_ANONYMOUS_PER_FLUSH + 1, "the cap, and a refusal of a known caller");
        assert_eq!(sink.anonymous.load(Ordering::Relaxed), MAX_ANONYMOUS_PER_FLUSH + 10, "counted for the summary");
        assert!(p.iter().all(|r| r.project.len() <= crate::state::audit::MAX_FIELD));
    }

    #[test]
    fn the_buffer_is_bounded_and_keeps_the_newest_when_records_come_back() {
        let sink = AuditSink::default();
        for i in 0..MAX_PENDING + 5 {
            sink.push(rec(i as i64, "x", "a", "s", true));
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 5);
        let taken = sink.take();
        assert_eq!(taken.len(), MAX_PENDING);
        sink.push(rec(-1, "new", "a", "s", true));
        sink.put_back(taken);
        let p = sink.take();
        assert_eq!(p.len(), MAX_PENDING);
        assert_eq!(p.last().unwrap().principal, "new", "what came meanwhile stays");
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 6);
    }
}
