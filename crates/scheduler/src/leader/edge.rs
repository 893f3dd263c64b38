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
    pub async fn enroll(&self, r: EnrollRequest) -> Result<EnrollResponse, SchedulerError> {
        let token = self.core.edge.enrollment_token.as_deref();
        let credential_hash = self.read(|st| edge_auth::admit(st.edge.devices.get(&r.device), token, &r))?;
        // The log gets the hash only: never the credential, never the token.
        let entry = EnrollRequest { enrollment_token: String::new(), credential: vec![], credential_hash, ..r.clone() };
        self.core.propose(Command::EnrollDevice(entry)).await?;
        self.core.edge.saw(&r.device);
        Ok(EnrollResponse {
            signing_public_key: self.core.edge.public_key().to_vec(),
            sync_interval_ms: SYNC_INTERVAL_MS,
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

    /// Deploys a model of `project` to edge devices (devices themselves belong to no project yet).
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
        };
        d.signature = self.core.edge.sign(&d);
        let res = self.core.propose(Command::EdgeDeploy(d)).await?;
        res.edge_deployment.ok_or_else(|| SchedulerError::Raft("deploy answered without a deployment".into()))
    }
}
