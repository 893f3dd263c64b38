//! The forwarding path: a follower sends client calls to the leader unchanged and relays the answer (streams
//! included). The leader's status passes through as is, so clients see the same errors on every node.

use aidos_api::cluster_service_client::ClusterServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use aidos_api::v1::*;
use tonic::transport::Channel;

use crate::error::SchedulerError;
use crate::leader::BoxStream;

pub struct Forwarder {
    channel: Channel,
}

fn remote(s: tonic::Status) -> SchedulerError {
    // The leader may be gone: the client retries, here or elsewhere.
    if s.code() == tonic::Code::Unknown && s.message().contains("transport") {
        return SchedulerError::Unavailable(format!("forwarding to the leader: {}", s.message()));
    }
    SchedulerError::Remote(s)
}

impl Forwarder {
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }
    fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel.clone())
    }
    fn cluster(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel.clone())
    }

    pub async fn submit(&self, r: SubmitRequest) -> Result<SubmitResponse, SchedulerError> {
        Ok(self.jobs().submit(r).await.map_err(remote)?.into_inner())
    }
    pub async fn submit_batch(&self, r: SubmitBatchRequest) -> Result<Vec<SubmitResponse>, SchedulerError> {
        Ok(self.jobs().submit_batch(r).await.map_err(remote)?.into_inner().responses)
    }
    pub async fn get(&self, job_id: String) -> Result<Job, SchedulerError> {
        Ok(self.jobs().get(GetJobRequest { job_id }).await.map_err(remote)?.into_inner())
    }
    pub async fn list(&self, r: ListJobsRequest) -> Result<ListJobsResponse, SchedulerError> {
        Ok(self.jobs().list(r).await.map_err(remote)?.into_inner())
    }
    pub async fn cancel(&self, job_id: String) -> Result<Job, SchedulerError> {
        Ok(self.jobs().cancel(CancelJobRequest { job_id }).await.map_err(remote)?.into_inner())
    }
    pub async fn watch(&self, job_id: String) -> Result<BoxStream<Job>, SchedulerError> {
        Ok(Box::pin(self.jobs().watch(WatchJobRequest { job_id }).await.map_err(remote)?.into_inner()))
    }
    pub async fn logs(&self, r: LogsRequest) -> Result<BoxStream<LogChunk>, SchedulerError> {
        Ok(Box::pin(self.jobs().logs(r).await.map_err(remote)?.into_inner()))
    }
    pub async fn add_node(&self, r: AddNodeRequest) -> Result<ClusterStatus, SchedulerError> {
        Ok(self.cluster().add_node(r).await.map_err(remote)?.into_inner())
    }
    pub async fn remove_node(&self, r: RemoveNodeRequest) -> Result<ClusterStatus, SchedulerError> {
        Ok(self.cluster().remove_node(r).await.map_err(remote)?.into_inner())
    }
}

/// The same calls for datasets, runs and models: relayed to the leader unchanged.
impl Forwarder {
    fn datasets(&self) -> aidos_api::dataset_service_client::DatasetServiceClient<Channel> {
        aidos_api::dataset_service_client::DatasetServiceClient::new(self.channel.clone())
    }
    fn runs(&self) -> aidos_api::run_service_client::RunServiceClient<Channel> {
        aidos_api::run_service_client::RunServiceClient::new(self.channel.clone())
    }
    fn models(&self) -> aidos_api::model_service_client::ModelServiceClient<Channel> {
        aidos_api::model_service_client::ModelServiceClient::new(self.channel.clone())
    }
    pub async fn commit_dataset(&self, r: CommitDatasetRequest) -> Result<DatasetManifest, SchedulerError> {
        Ok(self.datasets().commit(r).await.map_err(remote)?.into_inner())
    }
    pub async fn list_datasets(&self, r: ListDatasetsRequest) -> Result<ListDatasetsResponse, SchedulerError> {
        Ok(self.datasets().list(r).await.map_err(remote)?.into_inner())
    }
    pub async fn get_dataset(&self, r: GetDatasetRequest) -> Result<DatasetManifest, SchedulerError> {
        Ok(self.datasets().get(r).await.map_err(remote)?.into_inner())
    }
    pub async fn report_metrics(&self, r: ReportMetricsRequest) -> Result<(), SchedulerError> {
        self.runs().report_metrics(r).await.map_err(remote)?;
        Ok(())
    }
    pub async fn record_checkpoint(&self, r: RecordCheckpointRequest) -> Result<(), SchedulerError> {
        self.runs().record_checkpoint(r).await.map_err(remote)?;
        Ok(())
    }
    pub async fn latest_checkpoint(
        &self,
        r: LatestCheckpointRequest,
    ) -> Result<LatestCheckpointResponse, SchedulerError> {
        Ok(self.runs().latest_checkpoint(r).await.map_err(remote)?.into_inner())
    }
    pub async fn list_runs(&self, r: ListRunsRequest) -> Result<ListRunsResponse, SchedulerError> {
        Ok(self.runs().list(r).await.map_err(remote)?.into_inner())
    }
    pub async fn get_run(&self, r: GetRunRequest) -> Result<Run, SchedulerError> {
        Ok(self.runs().get(r).await.map_err(remote)?.into_inner())
    }
    pub async fn register_model(&self, r: RegisterModelRequest) -> Result<ModelVersion, SchedulerError> {
        Ok(self.models().register(r).await.map_err(remote)?.into_inner())
    }
    pub async fn list_models(&self, r: ListModelsRequest) -> Result<ListModelsResponse, SchedulerError> {
        Ok(self.models().list(r).await.map_err(remote)?.into_inner())
    }
    pub async fn get_model(&self, r: GetModelRequest) -> Result<ModelVersion, SchedulerError> {
        Ok(self.models().get(r).await.map_err(remote)?.into_inner())
    }
    pub async fn set_alias(&self, r: SetAliasRequest) -> Result<ModelVersion, SchedulerError> {
        Ok(self.models().set_alias(r).await.map_err(remote)?.into_inner())
    }

    pub async fn set_artifact(&self, r: SetArtifactRequest) -> Result<ModelVersion, SchedulerError> {
        Ok(self.models().set_artifact(r).await.map_err(remote)?.into_inner())
    }

    fn edge(&self) -> aidos_api::edge_service_client::EdgeServiceClient<Channel> {
        aidos_api::edge_service_client::EdgeServiceClient::new(self.channel.clone())
    }
    pub async fn enroll(&self, r: EnrollRequest) -> Result<EnrollResponse, SchedulerError> {
        Ok(self.edge().enroll(r).await.map_err(remote)?.into_inner())
    }
    pub async fn edge_sync(&self, r: EdgeSyncRequest) -> Result<EdgeSyncResponse, SchedulerError> {
        Ok(self.edge().sync(r).await.map_err(remote)?.into_inner())
    }
    pub async fn list_devices(&self, r: ListDevicesRequest) -> Result<ListDevicesResponse, SchedulerError> {
        Ok(self.edge().list_devices(r).await.map_err(remote)?.into_inner())
    }
    pub async fn edge_deploy(&self, r: EdgeDeployRequest) -> Result<EdgeDeployment, SchedulerError> {
        Ok(self.edge().deploy(r).await.map_err(remote)?.into_inner())
    }

    fn serve(&self) -> aidos_api::serve_service_client::ServeServiceClient<Channel> {
        aidos_api::serve_service_client::ServeServiceClient::new(self.channel.clone())
    }
    pub async fn deploy(&self, r: DeployRequest) -> Result<Deployment, SchedulerError> {
        Ok(self.serve().deploy(r).await.map_err(remote)?.into_inner())
    }
    pub async fn list_deployments(&self, r: ListDeploymentsRequest) -> Result<ListDeploymentsResponse, SchedulerError> {
        Ok(self.serve().list(r).await.map_err(remote)?.into_inner())
    }
    pub async fn delete_deployment(&self, r: DeleteDeploymentRequest) -> Result<Deployment, SchedulerError> {
        Ok(self.serve().delete(r).await.map_err(remote)?.into_inner())
    }
    pub async fn report_endpoint(&self, r: ReportEndpointRequest) -> Result<(), SchedulerError> {
        self.serve().report_endpoint(r).await.map_err(remote)?;
        Ok(())
    }
}
