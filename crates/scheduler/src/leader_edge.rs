//! The edge control plane: enrolment, the agents' sync calls, signed deployments and chunked artifact downloads.
//!
//! The signing key (ed25519) lives in a file beside the node's data (`edge-signing.key`, created on first start,
//! mode 0600) or where `SchedulerConfig::edge_signing_key` points; every node of a cluster must be given the same
//! key file, since devices pin its public key at enrolment. Deployments are signed by the leader before they are
//! proposed, so the log holds signatures, never the key.
//!
//! Downloads are served by any node from its blob store (range reads in the blocking pool), only for artifacts of a
//! current edge deployment and only to enrolled devices that present their credential; one chunk is at most
//! [`MAX_CHUNK`] bytes. Enrolment and credentials: `edge_auth`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::*;
use aidos_blob::BlobStore;
use ed25519_dalek::{Signer, SigningKey};

use crate::core::Core;
use crate::edge_auth;
use crate::edge_state::desired_for;
use crate::error::SchedulerError;
use crate::leader::LeaderHandler;

/// Largest download chunk.
pub const MAX_CHUNK: u32 = 4 << 20;
/// How often agents should sync.
pub const SYNC_INTERVAL_MS: u32 = 1000;

/// The node's edge material: the signing key, the enrolment token, the blob store artifacts are read from, and
/// when each device was last heard from (leader memory).
pub struct EdgeCore {
    key: SigningKey,
    enrollment_token: Option<String>,
    blobs: Option<aidos_blob::LocalDirStore>,
    seen: Mutex<HashMap<String, i64>>,
}

impl EdgeCore {
    /// Loads the signing key from `key_file` (creating it when missing) and opens the blob store.
    pub fn open(
        key_file: &Path,
        blob_dir: Option<&Path>,
        enrollment_token: Option<String>,
    ) -> Result<EdgeCore, SchedulerError> {
        let key = load_or_create_key(key_file)?;
        let blobs = match blob_dir {
            Some(d) => Some(
                aidos_blob::LocalDirStore::open(d)
                    .map_err(|e| SchedulerError::Storage(format!("blob store {}: {e}", d.display())))?,
            ),
            None => None,
        };
        let enrollment_token = enrollment_token.filter(|t| !t.is_empty());
        if enrollment_token.is_none() {
            tracing::info!(
                "edge enrolment is open (no --edge-enrollment-token): any agent can enrol a new device name"
            );
        }
        Ok(EdgeCore { key, enrollment_token, blobs, seen: Mutex::new(HashMap::new()) })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    fn saw(&self, device: &str) {
        self.seen.lock().expect("seen lock").insert(device.to_string(), aidos_api::now_ms());
    }
}

/// The default key file of a node.
pub fn default_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("edge-signing.key")
}

fn load_or_create_key(path: &Path) -> Result<SigningKey, SchedulerError> {
    let io = |e: std::io::Error| SchedulerError::Storage(format!("edge signing key {}: {e}", path.display()));
    match std::fs::read(path) {
        Ok(b) => {
            let bytes: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                SchedulerError::Storage(format!("edge signing key {}: {} bytes, expected 32", path.display(), b.len()))
            })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let seed: [u8; 32] = rand::random();
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&seed).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            tracing::info!("created the edge signing key {}", path.display());
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) => Err(io(e)),
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::InvalidArgument(format!("{field}: {why}"))
}

impl LeaderHandler {
    pub async fn enroll(&self, r: EnrollRequest) -> Result<EnrollResponse, SchedulerError> {
        let token = self.core.edge.enrollment_token.as_deref();
        let credential_hash = self.read(|st| edge_auth::admit(st.edge_devices.get(&r.device), token, &r))?;
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
            let d = st.edge_devices.get(&r.device);
            edge_auth::check(d, &r.device, &r.credential).map(|()| d.is_some_and(|d| d.status != r.status))
        })?;
        self.core.edge.saw(&r.device);
        let accepted = r.telemetry.len() as u32;
        if changed || accepted > 0 {
            self.core.propose(Command::EdgeReport(EdgeSyncRequest { credential: vec![], ..r.clone() })).await?;
        }
        let deployment = self.read(|st| {
            let d = st.edge_devices.get(&r.device)?;
            desired_for(d, st.edge_deployments.values()).cloned()
        });
        Ok(EdgeSyncResponse { deployment, accepted_telemetry: accepted })
    }

    pub async fn edge_deploy(&self, r: EdgeDeployRequest) -> Result<EdgeDeployment, SchedulerError> {
        let model =
            self.get_model(&GetModelRequest { name: r.model.clone(), version: r.version, alias: String::new() })?;
        let blobs = self.core.edge.blobs.clone().ok_or_else(|| {
            SchedulerError::Unavailable("this control plane has no blob store configured (--blob-dir)".into())
        })?;
        let id = aidos_blob::BlobId::parse(&r.artifact).map_err(|e| invalid("artifact", e))?;
        let size = tokio::task::spawn_blocking(move || blobs.get(&id).map(|b| b.len() as u64))
            .await
            .map_err(|e| SchedulerError::Storage(e.to_string()))?
            .map_err(|e| invalid("artifact", format!("{}: {e}", r.artifact)))?;
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
        d.signature = self.core.edge.key.sign(&aidos_api::edge::signed_bytes(&d)).to_bytes().to_vec();
        let res = self.core.propose(Command::EdgeDeploy(d)).await?;
        res.edge_deployment.ok_or_else(|| SchedulerError::Raft("deploy answered without a deployment".into()))
    }
}

/// Read-only edge calls any node answers from its applied state.
impl Core {
    pub fn list_devices(&self, r: &ListDevicesRequest) -> ListDevicesResponse {
        let seen = self.edge.seen.lock().expect("seen lock").clone();
        let st = self.state.read().expect("state lock");
        ListDevicesResponse {
            devices: st
                .state
                .edge_devices
                .values()
                .filter(|d| r.name.is_empty() || d.name == r.name)
                .map(|d| EdgeDevice {
                    // Heard from since this node led, else at least when its last report was committed.
                    last_seen_ms: seen.get(&d.name).copied().unwrap_or(0).max(d.status_at_ms),
                    credential_hash: vec![],
                    ..d.clone()
                })
                .collect(),
        }
    }

    pub fn list_edge_deployments(&self) -> ListEdgeDeploymentsResponse {
        let st = self.state.read().expect("state lock");
        ListEdgeDeploymentsResponse { deployments: st.state.edge_deployments.values().cloned().collect() }
    }

    /// One chunk of an artifact that some current edge deployment names, for an enrolled device.
    pub async fn download(&self, r: DownloadRequest) -> Result<DownloadChunk, SchedulerError> {
        {
            let st = self.state.read().expect("state lock");
            edge_auth::check(st.state.edge_devices.get(&r.device), &r.device, &r.credential)?;
            if !st.state.edge_deployments.values().any(|d| d.artifact == r.artifact) {
                return Err(SchedulerError::NotFound(format!("artifact {} belongs to no edge deployment", r.artifact)));
            }
        }
        let blobs = self.edge.blobs.clone().ok_or_else(|| {
            SchedulerError::Unavailable("this control plane has no blob store configured (--blob-dir)".into())
        })?;
        let id = aidos_blob::BlobId::parse(&r.artifact).map_err(|e| invalid("artifact", e))?;
        let max = r.max_bytes.clamp(1, MAX_CHUNK) as u64;
        let offset = r.offset;
        // A range read, not `get`: verifying the whole artifact on every chunk would cost O(size) per chunk. The
        // agent verifies the hash of what it assembled, and `edge_deploy` verified the artifact when it signed.
        tokio::task::spawn_blocking(move || {
            let (data, total) = blobs
                .read_range(&id, offset, max)
                .map_err(|e| SchedulerError::NotFound(format!("artifact {id}: {e}")))?;
            if offset > total {
                return Err(invalid("offset", format!("{offset} is past the end ({total} bytes)")));
            }
            Ok(DownloadChunk { data, total_size: total })
        })
        .await
        .map_err(|e| SchedulerError::Storage(e.to_string()))?
    }
}
