//! Test support, used only as a dev-dependency: an in-process mock scheduler serving what a task calls (the
//! DatasetService, RunService and ModelService of `aidos_api`), for tests of the SDK and the built-in trainer.
//!
//! The mock records every write in a shared [`MockState`] the test inspects, and can be told to fail: the next
//! `unavailable_left` calls answer UNAVAILABLE (an election), and while `fenced` is set every attempt-fenced write
//! (metrics, checkpoints, registration) answers FAILED_PRECONDITION (a stale attempt). It holds one dataset
//! manifest; calls a task never makes answer UNIMPLEMENTED.
//!
//! [`weed`]: a real S3-compatible server (SeaweedFS) for the blob-store conformance suite, the multi-host test and
//! the blob benchmarks.

pub mod weed;

use std::sync::{Arc, Mutex};

use aidos_api::dataset_service_server::{DatasetService, DatasetServiceServer};
use aidos_api::model_service_server::{ModelService, ModelServiceServer};
use aidos_api::run_service_server::{RunService, RunServiceServer};
use aidos_api::v1::*;
use tonic::{Request, Response, Status};

/// What the mock holds and what it has been sent.
#[derive(Default)]
pub struct MockState {
    /// The one dataset `DatasetService.Get` knows (version 0 asks for it too).
    pub manifest: DatasetManifest,
    pub reports: Vec<ReportMetricsRequest>,
    pub checkpoints: Vec<RecordCheckpointRequest>,
    pub registers: Vec<RegisterModelRequest>,
    /// Refuse fenced writes as a stale attempt.
    pub fenced: bool,
    /// Answer this many more calls with UNAVAILABLE.
    pub unavailable_left: usize,
    /// Calls answered so far (including refused ones).
    pub calls: usize,
}

/// The mock scheduler: cheap to clone, all clones share one [`MockState`].
#[derive(Clone)]
pub struct MockScheduler(pub Arc<Mutex<MockState>>);

impl MockScheduler {
    /// Counts the call and applies the failure modes of the module docs.
    fn gate(&self, fenced_write: bool) -> Result<(), Status> {
        let mut s = self.0.lock().unwrap();
        s.calls += 1;
        if s.unavailable_left > 0 {
            s.unavailable_left -= 1;
            return Err(Status::unavailable("no leader (election in progress)"));
        }
        if fenced_write && s.fenced {
            return Err(Status::failed_precondition("stale report refused for job-1/0#2"));
        }
        Ok(())
    }

    /// Serves the mock on 127.0.0.1 (an ephemeral port) from its own thread and runtime, for the rest of the
    /// process; returns its address. The listener is bound before this returns, so calls may start at once.
    pub fn serve(self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(DatasetServiceServer::new(self.clone()))
                    .add_service(RunServiceServer::new(self.clone()))
                    .add_service(ModelServiceServer::new(self))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
                    .await
                    .unwrap();
            });
        });
        addr
    }
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl DatasetService for MockScheduler {
    async fn commit(&self, _: Request<CommitDatasetRequest>) -> Res<DatasetManifest> {
        Err(Status::unimplemented("mock"))
    }
    async fn list(&self, _: Request<ListDatasetsRequest>) -> Res<ListDatasetsResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn get(&self, r: Request<GetDatasetRequest>) -> Res<DatasetManifest> {
        self.gate(false)?;
        let r = r.into_inner();
        let m = self.0.lock().unwrap().manifest.clone();
        if r.name == m.name && (r.version == 0 || r.version == m.version) {
            Ok(Response::new(m))
        } else {
            Err(Status::not_found(format!("dataset {} has no version {}", r.name, r.version)))
        }
    }
}

#[tonic::async_trait]
impl RunService for MockScheduler {
    async fn report_metrics(&self, r: Request<ReportMetricsRequest>) -> Res<ReportAck> {
        self.gate(true)?;
        self.0.lock().unwrap().reports.push(r.into_inner());
        Ok(Response::new(ReportAck {}))
    }
    async fn record_checkpoint(&self, r: Request<RecordCheckpointRequest>) -> Res<ReportAck> {
        self.gate(true)?;
        self.0.lock().unwrap().checkpoints.push(r.into_inner());
        Ok(Response::new(ReportAck {}))
    }
    /// The newest recorded checkpoint, whatever the job asking.
    async fn latest_checkpoint(&self, _: Request<LatestCheckpointRequest>) -> Res<LatestCheckpointResponse> {
        self.gate(false)?;
        let s = self.0.lock().unwrap();
        Ok(Response::new(LatestCheckpointResponse {
            checkpoint: s.checkpoints.last().and_then(|c| c.checkpoint.clone()),
            run_id: "job-1.1".into(),
        }))
    }
    async fn list(&self, _: Request<ListRunsRequest>) -> Res<ListRunsResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn get(&self, _: Request<GetRunRequest>) -> Res<Run> {
        Err(Status::unimplemented("mock"))
    }
    async fn create_experiment(&self, _: Request<CreateExperimentRequest>) -> Res<Experiment> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_experiments(&self, _: Request<ListExperimentsRequest>) -> Res<ListExperimentsResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn create_run(&self, _: Request<CreateRunRequest>) -> Res<Run> {
        Err(Status::unimplemented("mock"))
    }
    async fn update_run(&self, _: Request<UpdateRunRequest>) -> Res<Run> {
        Err(Status::unimplemented("mock"))
    }
}

#[tonic::async_trait]
impl ModelService for MockScheduler {
    /// Records the registration; the version is the number of registrations so far.
    async fn register(&self, r: Request<RegisterModelRequest>) -> Res<ModelVersion> {
        self.gate(true)?;
        let r = r.into_inner();
        let mut m = r.model.clone().unwrap();
        let mut s = self.0.lock().unwrap();
        s.registers.push(r);
        m.version = s.registers.len() as u32;
        Ok(Response::new(m))
    }
    async fn list(&self, _: Request<ListModelsRequest>) -> Res<ListModelsResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn get(&self, _: Request<GetModelRequest>) -> Res<ModelVersion> {
        Err(Status::unimplemented("mock"))
    }
    async fn set_alias(&self, _: Request<SetAliasRequest>) -> Res<ModelVersion> {
        Err(Status::unimplemented("mock"))
    }
    async fn set_artifact(&self, _: Request<SetArtifactRequest>) -> Res<ModelVersion> {
        Err(Status::unimplemented("mock"))
    }
    async fn create(&self, _: Request<CreateModelRequest>) -> Res<RegisteredModel> {
        Err(Status::unimplemented("mock"))
    }
}
