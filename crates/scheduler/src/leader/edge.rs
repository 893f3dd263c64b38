//! The leader path for edge devices: enrolment, the agents' sync calls and signed deployments. Enrolment and
//! credentials: `edge_auth`; key material and artifact reads: `edge_keys`.

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::*;

use super::LeaderHandler;
use crate::edge_auth;
use crate::error::SchedulerError;
use crate::queries;

/// How often agents should sync.
pub const SYNC_INTERVAL_MS: u32 = 1000;

impl LeaderHandler {
    /// Enrols (or re-enrols) a device: [`edge_auth::admit`] decides; a join token is used up before the enrolment is
    /// recorded; on a TLS control plane a certificate request is signed (`aidos-device:<name>`) and its serial
    /// recorded as the only one the device's calls are accepted with.
    ///
    /// Two entries when a join token is used: the token first (so two enrolments racing with one token cannot both
    /// pass), then the device. Both are proposed from a task of their own, so a client that times out or goes away
    /// cannot leave the token used and the device not enrolled; a leader lost between the two still can (the
    /// agent's retry is then refused as "used", and the operator makes a new token).
    pub async fn enroll(&self, r: EnrollRequest) -> Result<EnrollResponse, SchedulerError> {
        let token = self.core.edge.enrollment_token.as_deref();
        let tls = self.core.ca();
        let (credential_hash, admission) =
            self.read(|st| edge_auth::admit(st.edge.devices.get(&r.device), token, tls.is_some(), &r))?;
        // What apply would refuse, refused before a join token is used up for it.
        crate::state::edge::check_enrollment(&r).map_err(|e| SchedulerError::InvalidArgument(e.message))?;
        let issued = match (tls, r.csr_pem.is_empty()) {
            (Some(t), false) => {
                if !aidos_api::tls::valid_name(&r.device) {
                    return Err(SchedulerError::InvalidArgument(format!(
                        "device: {:?} cannot be named in a certificate (1-128 of A-Z a-z 0-9 . _ -)",
                        r.device
                    )));
                }
                if r.csr_pem.len() > 16 << 10 {
                    return Err(SchedulerError::InvalidArgument("csr_pem: larger than 16 KiB".into()));
                }
                let identity = aidos_api::tls::Identity::Device(r.device.clone());
                let issued = t.ca.sign_request(&r.csr_pem, &identity, t.device_cert_lifetime);
                Some(issued.map_err(|e| SchedulerError::InvalidArgument(format!("csr_pem: {e}")))?)
            }
            _ => None,
        };
        let join = match admission {
            edge_auth::Admission::JoinToken => Some(self.join_token(&r.join_token)?),
            _ => None,
        };
        let project = self.read(|st| {
            edge_auth::project_for(
                st.edge.devices.get(&r.device),
                join.as_ref().map(|t| t.project.as_str()),
                &r.project,
            )
        })?;
        let join_token_id = join.map(|t| t.id).unwrap_or_default();
        // The log gets the hash only: never the credential, never a token's secret.
        let entry = EnrollRequest {
            enrollment_token: String::new(),
            join_token: String::new(),
            csr_pem: String::new(),
            credential: vec![],
            credential_hash,
            cert_serial: issued.as_ref().map(|i| i.serial.clone()).unwrap_or_default(),
            cert_not_after_ms: issued.as_ref().map_or(0, |i| i.not_after_ms),
            join_token_id,
            project,
            ..r.clone()
        };
        let core = self.core.clone();
        let entries = tokio::spawn(async move {
            if !entry.join_token_id.is_empty() {
                core.propose(Command::UseJoinToken(UseJoinTokenV1 { id: entry.join_token_id.clone() })).await?;
            }
            core.propose(Command::EnrollDevice(entry)).await
        });
        entries.await.map_err(|e| SchedulerError::Raft(format!("enrolment task: {e}")))??;
        self.core.edge.saw(&r.device);
        Ok(EnrollResponse {
            signing_public_key: self.core.edge.public_key().to_vec(),
            sync_interval_ms: SYNC_INTERVAL_MS,
            cert_not_after_ms: issued.as_ref().map_or(0, |i| i.not_after_ms),
            cert_lifetime_ms: match (&issued, tls) {
                (Some(_), Some(t)) => t.device_cert_lifetime.as_millis() as i64,
                _ => 0,
            },
            cert_pem: issued.map(|i| i.cert_pem).unwrap_or_default(),
            ca_pem: tls.map(|t| t.ca.cert_pem().to_string()).unwrap_or_default(),
        })
    }

    /// Records what changed (status, telemetry) and answers with the deployment the device should run.
    pub async fn edge_sync(&self, r: EdgeSyncRequest) -> Result<EdgeSyncResponse, SchedulerError> {
        let changed = self.read(|st| {
            let d = st.edge.devices.get(&r.device);
            edge_auth::check(d, &r.device, &r.credential).map(|()| d.is_some_and(|d| d.status != r.status))
        })?;
        self.core.edge.saw(&r.device);
        let accepted = r.telemetry.len() as u32;
        if changed || accepted > 0 {
            self.core.propose(Command::EdgeReport(EdgeSyncRequest { credential: vec![], ..r.clone() })).await?;
        }
        let deployment = self.read(|st| queries::desired_edge_deployment(st, &r.device));
        Ok(EdgeSyncResponse { deployment, accepted_telemetry: accepted })
    }

    /// Deploys a model of `project` to the edge devices of `project`.
    pub async fn edge_deploy(&self, r: EdgeDeployRequest, project: &str) -> Result<EdgeDeployment, SchedulerError> {
        let req = GetModelRequest { name: r.model.clone(), version: r.version, alias: String::new() };
        let model = self.read(|st| queries::get_model(st, &req, project))?;
        // Held from before the artifact is checked until the deployment applied (see `gc::RefGate`).
        let _pin = self.core.gc.pin([r.artifact.as_str()], self.core.blobs.as_ref()).await?;
        let size = self.core.edge.verified_size(&r.artifact).await?;
        let mut d = EdgeDeployment {
            name: if r.name.is_empty() { model.name.clone() } else { r.name.clone() },
            selector: r.selector.clone(),
            model: model.name.clone(),
            version: model.version,
            artifact: r.artifact.clone(),
            size,
            sample_input: r.sample_input.clone(),
            sample_output: r.sample_output.clone(),
            signature: vec![],
            created_at_ms: 0,
            requested: r.requested.clone(),
            project: project.to_string(),
        };
        d.signature = self.core.edge.sign(&d);
        let res = self.core.propose(Command::EdgeDeploy(d)).await?;
        res.edge_deployment.ok_or_else(|| SchedulerError::Raft("deploy answered without a deployment".into()))
    }
}
