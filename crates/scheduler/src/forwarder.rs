//! The forwarding path: a follower sends client calls to the leader unchanged and relays the answer (streams
//! included). The leader's status passes through as is, so clients see the same errors on every node.

use aidos_api::cluster_service_client::ClusterServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use aidos_api::v1::{
    AddNodeRequest, CancelJobRequest, ClusterStatus, GetJobRequest, Job, ListJobsRequest, ListJobsResponse, LogChunk,
    LogsRequest, RemoveNodeRequest, SubmitBatchRequest, SubmitRequest, SubmitResponse, WatchJobRequest,
};
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
