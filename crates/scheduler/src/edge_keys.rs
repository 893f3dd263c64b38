//! The node's edge material: the ed25519 signing key edge deployments are signed with, the enrolment token, the
//! blob store artifacts are read from, and when each device was last heard from (leader memory, never the log).
//!
//! The signing key lives in a file beside the node's data (`edge-signing.key`, created on first start, mode 0600)
//! or where `SchedulerConfig::edge_signing_key` points; every node of a cluster must be given the same key file,
//! since devices pin its public key at enrolment. Deployments are signed by the leader before they are proposed,
//! so the log holds signatures, never the key.
//!
//! Downloads are served by any node from its blob store (range reads in the blocking pool), only for artifacts of a
//! current edge deployment and only to enrolled devices that present their credential (checked by the caller); one
//! chunk is at most [`MAX_CHUNK`] bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aidos_api::v1::{DownloadChunk, EdgeDeployment};
use aidos_blob::BlobStore;
use ed25519_dalek::{Signer, SigningKey};

use crate::error::SchedulerError;

/// Largest download chunk.
pub const MAX_CHUNK: u32 = 4 << 20;

/// The node's edge material: the signing key, the enrolment token, the blob store artifacts are read from, and
/// when each device was last heard from (leader memory).
pub struct EdgeCore {
    key: SigningKey,
    pub(crate) enrollment_token: Option<String>,
    blobs: Option<Arc<dyn BlobStore>>,
    seen: Mutex<HashMap<String, i64>>,
}

impl EdgeCore {
    /// Loads the signing key from `key_file` (creating it when missing) and opens the blob store.
    pub fn open(
        key_file: &Path,
        blobs: Option<Arc<dyn BlobStore>>,
        enrollment_token: Option<String>,
    ) -> Result<EdgeCore, SchedulerError> {
        let key = load_or_create_key(key_file)?;
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

    pub(crate) fn saw(&self, device: &str) {
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

impl EdgeCore {
    /// When each device was last heard from, as this node remembers it.
    pub fn seen(&self) -> HashMap<String, i64> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Signs a deployment (over `aidos_api::edge::signed_bytes`).
    pub fn sign(&self, d: &EdgeDeployment) -> Vec<u8> {
        self.key.sign(&aidos_api::edge::signed_bytes(d)).to_bytes().to_vec()
    }

    fn blobs(&self) -> Result<Arc<dyn BlobStore>, SchedulerError> {
        self.blobs.clone().ok_or_else(|| {
            SchedulerError::Unavailable("this control plane has no blob store configured (--blob-dir)".into())
        })
    }

    /// The size of an artifact, verified in full (before it is signed into a deployment).
    pub async fn verified_size(&self, artifact: &str) -> Result<u64, SchedulerError> {
        let blobs = self.blobs()?;
        let id = aidos_blob::BlobId::parse(artifact).map_err(|e| invalid("artifact", e))?;
        let artifact = artifact.to_string();
        tokio::task::spawn_blocking(move || blobs.get(&id).map(|b| b.len() as u64))
            .await
            .map_err(|e| SchedulerError::Storage(e.to_string()))?
            .map_err(|e| invalid("artifact", format!("{artifact}: {e}")))
    }

    /// One chunk of an artifact (the caller checked the device and that a deployment names the artifact).
    pub async fn read_chunk(
        &self,
        artifact: &str,
        offset: u64,
        max_bytes: u32,
    ) -> Result<DownloadChunk, SchedulerError> {
        let blobs = self.blobs()?;
        let id = aidos_blob::BlobId::parse(artifact).map_err(|e| invalid("artifact", e))?;
        let max = max_bytes.clamp(1, MAX_CHUNK) as u64;
        // A range read, not `get`: verifying the whole artifact on every chunk would cost O(size) per chunk. The
        // agent verifies the hash of what it assembled, and the edge deploy verified the artifact when it signed.
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

fn invalid(field: &str, why: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::InvalidArgument(format!("{field}: {why}"))
}
