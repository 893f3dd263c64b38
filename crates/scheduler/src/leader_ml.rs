//! The leader path for datasets, runs and the model registry: writes are proposed, reads come from the applied
//! state. Validation that needs no state happens here; everything else in `ml_state` (applied on every node).

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::*;

use crate::error::SchedulerError;
use crate::leader::LeaderHandler;
use crate::ml_state::run_id;

/// Largest dataset manifest accepted (chunk lists and per-feature stats included).
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;

impl LeaderHandler {
    pub(crate) fn read<T>(&self, f: impl FnOnce(&crate::state::ClusterState) -> T) -> T {
        f(&self.core.state.read().expect("state lock").state)
    }

    pub async fn commit_dataset(&self, r: CommitDatasetRequest) -> Result<DatasetManifest, SchedulerError> {
        use prost::Message;
        if r.encoded_len() > MAX_MANIFEST_BYTES {
            return Err(SchedulerError::InvalidArgument(format!("manifest: larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let res = self.core.propose(Command::CommitDataset(r)).await?;
        res.dataset.ok_or_else(|| SchedulerError::Raft("commit answered without a manifest".into()))
    }

    pub fn list_datasets(&self, r: &ListDatasetsRequest) -> ListDatasetsResponse {
        self.read(|st| ListDatasetsResponse {
            datasets: st
                .datasets
                .iter()
                .filter(|(n, _)| r.name.is_empty() || **n == r.name)
                .flat_map(|(_, vs)| vs.iter().cloned())
                .collect(),
        })
    }

    pub fn get_dataset(&self, r: &GetDatasetRequest) -> Result<DatasetManifest, SchedulerError> {
        self.read(|st| {
            st.dataset(&r.name, r.version).cloned().ok_or_else(|| {
                let have = st.datasets.get(&r.name).map(|v| v.len()).unwrap_or(0);
                SchedulerError::NotFound(match (have, r.version) {
                    (0, _) => format!("dataset {} not found", r.name),
                    (n, v) => format!("dataset {}@v{v} not found (latest is v{n})", r.name),
                })
            })
        })
    }

    pub async fn report_metrics(&self, r: ReportMetricsRequest) -> Result<(), SchedulerError> {
        self.core.propose(Command::ReportMetrics(r)).await.map(|_| ())
    }

    pub async fn record_checkpoint(&self, r: RecordCheckpointRequest) -> Result<(), SchedulerError> {
        self.core.propose(Command::RecordCheckpoint(r)).await.map(|_| ())
    }

    pub fn latest_checkpoint(&self, job_id: &str) -> LatestCheckpointResponse {
        self.read(|st| match st.latest_checkpoint(job_id) {
            Some((run_id, ck)) => LatestCheckpointResponse { checkpoint: Some(ck), run_id },
            None => LatestCheckpointResponse::default(),
        })
    }

    pub fn list_runs(&self, r: &ListRunsRequest) -> ListRunsResponse {
        self.read(|st| ListRunsResponse {
            runs: st.runs.values().filter(|x| r.job_id.is_empty() || x.job_id == r.job_id).cloned().collect(),
        })
    }

    /// A run by id (`job-3.1`), or by job id (`job-3`: its latest attempt's run).
    pub fn get_run(&self, id: &str) -> Result<Run, SchedulerError> {
        self.read(|st| {
            if let Some(r) = st.runs.get(id) {
                return Ok(r.clone());
            }
            let latest = st.jobs.get(id).map(|j| run_id(id, j.attempt)).and_then(|rid| st.runs.get(&rid));
            latest.cloned().ok_or_else(|| SchedulerError::NotFound(format!("run {id} not found")))
        })
    }

    pub async fn register_model(&self, r: RegisterModelRequest) -> Result<ModelVersion, SchedulerError> {
        let res = self.core.propose(Command::RegisterModel(r)).await?;
        res.model.ok_or_else(|| SchedulerError::Raft("register answered without a model".into()))
    }

    pub fn list_models(&self, r: &ListModelsRequest) -> ListModelsResponse {
        self.read(|st| ListModelsResponse {
            models: st
                .models
                .iter()
                .filter(|(n, _)| r.name.is_empty() || **n == r.name)
                .flat_map(|(_, vs)| vs.iter().cloned())
                .collect(),
        })
    }

    pub fn get_model(&self, r: &GetModelRequest) -> Result<ModelVersion, SchedulerError> {
        self.read(|st| {
            st.model(&r.name, r.version, &r.alias).cloned().ok_or_else(|| {
                SchedulerError::NotFound(if !st.models.contains_key(&r.name) {
                    format!("model {} not found", r.name)
                } else if !r.alias.is_empty() {
                    format!("model {} has no alias @{}", r.name, r.alias)
                } else {
                    format!("model {} has no version {}", r.name, r.version)
                })
            })
        })
    }

    pub async fn set_alias(&self, r: SetAliasRequest) -> Result<ModelVersion, SchedulerError> {
        let res = self.core.propose(Command::SetAlias(r)).await?;
        res.model.ok_or_else(|| SchedulerError::Raft("alias answered without a model".into()))
    }

    pub async fn set_artifact(&self, r: SetArtifactRequest) -> Result<ModelVersion, SchedulerError> {
        let res = self.core.propose(Command::SetArtifact(r)).await?;
        res.model.ok_or_else(|| SchedulerError::Raft("artifact answered without a model".into()))
    }
}
