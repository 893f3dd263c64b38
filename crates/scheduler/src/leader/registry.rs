//! The leader path for datasets, runs and the model registry: writes are validated (what needs no state) and
//! proposed; the rest of the validation is `state::registry`'s apply, on every node. Reads: `queries`.
//!
//! Every write that adds blob references holds them in the blob collector's gate (`gc::RefGate`) from before its
//! proposal until it applied, so the collector never deletes a blob a commit is about to reference, and a commit
//! never references a blob the collector has deleted.

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::*;

use super::LeaderHandler;
use crate::error::SchedulerError;

/// Largest dataset manifest accepted (chunk lists and per-feature stats included).
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;

impl LeaderHandler {
    pub async fn commit_dataset(&self, r: CommitDatasetRequest) -> Result<DatasetManifest, SchedulerError> {
        use prost::Message;
        if r.encoded_len() > MAX_MANIFEST_BYTES {
            return Err(SchedulerError::InvalidArgument(format!("manifest: larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let m = r.manifest.as_ref();
        let chunks = m.into_iter().flat_map(|m| m.feature_chunks.iter().chain(&m.label_chunks));
        let ids = chunks.map(|c| c.blob.as_str()).chain(m.map(|m| m.row_hashes_blob.as_str()));
        let _pin = self.core.gc.pin(ids, self.core.blobs.as_ref()).await?;
        let res = self.core.propose(Command::CommitDataset(r)).await?;
        res.dataset.ok_or_else(|| SchedulerError::Raft("commit answered without a manifest".into()))
    }

    pub async fn report_metrics(&self, r: ReportMetricsRequest) -> Result<(), SchedulerError> {
        self.core.propose(Command::ReportMetrics(r)).await.map(|_| ())
    }

    pub async fn record_checkpoint(&self, r: RecordCheckpointRequest) -> Result<(), SchedulerError> {
        let ids = r.checkpoint.iter().map(|c| c.blob.as_str());
        let _pin = self.core.gc.pin(ids, self.core.blobs.as_ref()).await?;
        self.core.propose(Command::RecordCheckpoint(r)).await.map(|_| ())
    }

    pub async fn register_model(&self, r: RegisterModelRequest) -> Result<ModelVersion, SchedulerError> {
        let m = r.model.as_ref();
        let ids = m.into_iter().flat_map(|m| std::iter::once(&m.weights_blob).chain(m.artifacts.values()));
        let _pin = self.core.gc.pin(ids.map(String::as_str), self.core.blobs.as_ref()).await?;
        let res = self.core.propose(Command::RegisterModel(r)).await?;
        res.model.ok_or_else(|| SchedulerError::Raft("register answered without a model".into()))
    }

    pub async fn set_alias(&self, r: SetAliasRequest) -> Result<ModelVersion, SchedulerError> {
        let res = self.core.propose(Command::SetAlias(r)).await?;
        res.model.ok_or_else(|| SchedulerError::Raft("alias answered without a model".into()))
    }

    pub async fn set_artifact(&self, r: SetArtifactRequest) -> Result<ModelVersion, SchedulerError> {
        let _pin = self.core.gc.pin([r.blob.as_str()], self.core.blobs.as_ref()).await?;
        let res = self.core.propose(Command::SetArtifact(r)).await?;
        res.model.ok_or_else(|| SchedulerError::Raft("artifact answered without a model".into()))
    }
}
