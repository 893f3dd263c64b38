//! The built-in trainer (`aidos train-run`) end to end against an in-process mock scheduler: a synthetic 3-class
//! dataset in a real blob store, training, progress lines, checkpoints, registration with lineage, resumption by
//! a retried attempt, and a fenced attempt stopping.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aidos_api::dataset_service_server::{DatasetService, DatasetServiceServer};
use aidos_api::model_service_server::{ModelService, ModelServiceServer};
use aidos_api::run_service_server::{RunService, RunServiceServer};
use aidos_api::v1::*;
use aidos_kernels::TrainConfig;
use aidos_kernels::builtin::{ModelConfigRecord, TrainJob, run};
use aidos_sdk::{BlobStore, Context, LocalDirStore, TaskEnv};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    manifest: DatasetManifest,
    reports: Vec<ReportMetricsRequest>,
    checkpoints: Vec<RecordCheckpointRequest>,
    registers: Vec<RegisterModelRequest>,
    fenced: bool,
    unavailable_left: usize,
    calls: usize,
}

#[derive(Clone)]
struct Mock(Arc<Mutex<State>>);

impl Mock {
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
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl DatasetService for Mock {
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
impl RunService for Mock {
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
}

#[tonic::async_trait]
impl ModelService for Mock {
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
}

/// Starts the mock on its own thread and runtime; returns its address.
fn serve(mock: Mock) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(DatasetServiceServer::new(mock.clone()))
                .add_service(RunServiceServer::new(mock.clone()))
                .add_service(ModelServiceServer::new(mock))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
                .await
                .unwrap();
        });
    });
    addr
}

/// 3 well-separated classes in 4 features, 300 rows: train = first 240, test = last 60.
fn blobs_manifest(store: &LocalDirStore) -> DatasetManifest {
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    let mut s = 12345u64;
    let mut noise = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0
    };
    for r in 0..300u32 {
        let c = r % 3;
        for j in 0..4u32 {
            let center = if j % 3 == c { 10.0 } else { 0.0 };
            feats.extend_from_slice(&(center + noise() + 100.0).to_le_bytes());
        }
        labels.extend_from_slice(&c.to_le_bytes());
    }
    DatasetManifest {
        name: "blobs".into(),
        version: 1,
        format: "csv".into(),
        row_shape: vec![4],
        dtype: "f32".into(),
        rows: 300,
        feature_chunks: vec![ChunkRef {
            blob: store.put(&feats).unwrap().to_string(),
            rows: 300,
            bytes: feats.len() as u64,
        }],
        label_chunks: vec![ChunkRef { blob: store.put(&labels).unwrap().to_string(), rows: 300, bytes: 1200 }],
        splits: vec![
            Split { name: "train".into(), start: 0, end: 240 },
            Split { name: "test".into(), start: 240, end: 300 },
        ],
        content_hash: "hash-of-blobs".into(),
        num_classes: 3,
        ..Default::default()
    }
}

fn env(blobs: &Path, addr: &str, attempt: u32) -> TaskEnv {
    TaskEnv {
        job_id: "job-9".into(),
        rank: 0,
        world_size: 1,
        attempt,
        fencing_token: 100 + attempt as u64,
        worker_id: "w-1".into(),
        schedulers: vec![addr.to_string()],
        work_dir: blobs.to_path_buf(),
        blob_dir: blobs.to_path_buf(),
    }
}

fn job(epochs: u32) -> TrainJob {
    let cfg = format!(
        r#"{{"model":{{"name":"mlp","layers":[4,16,3]}},"optimizer":{{"name":"adam","lr":0.01}},"epochs":{epochs},"batch_size":16,"seed":3,"log_every_steps":5}}"#
    );
    TrainJob {
        dataset: "blobs@v1".into(),
        config: TrainConfig::from_json(&cfg).unwrap(),
        register_as: "blobs-mlp".into(),
        train_split: "train".into(),
        eval_split: "test".into(),
    }
}

#[test]
fn builtin_trainer_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(dir.path()).unwrap();
    let state = Arc::new(Mutex::new(State { manifest: blobs_manifest(&store), ..Default::default() }));
    let addr = serve(Mock(state.clone()));

    // Attempt 1: 2 epochs from scratch.
    let ctx = Context::new(env(dir.path(), &addr, 1)).unwrap();
    let mut out = Vec::new();
    let o = run(&ctx, &job(2), &mut out).unwrap();
    drop(ctx);
    let text = String::from_utf8(out).unwrap();
    assert!(o.test_accuracy > 0.9, "accuracy {} \n{text}", o.test_accuracy);
    assert_eq!(o.resumed_from_step, None);
    assert_eq!(o.global_step, 2 * 15);
    let progress: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("AIDOS_PROGRESS "))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    assert_eq!(progress.len(), 6 + 2, "{text}"); // every 5 steps of 30, plus 2 epoch ends
    let last = progress.last().unwrap();
    assert_eq!((last["epoch"].as_u64(), last["epochs"].as_u64()), (Some(2), Some(2)));
    assert_eq!((last["step"].as_u64(), last["steps"].as_u64()), (Some(30), Some(30)));
    assert!(last["accuracy"].as_f64().is_some() && progress[0]["accuracy"].is_null());
    assert!(text.contains(&format!("registered model blobs-mlp:1 test_accuracy={:.4}", o.test_accuracy)), "{text}");
    {
        let s = state.lock().unwrap();
        let r = s.registers.last().unwrap();
        let m = r.model.as_ref().unwrap();
        let lin = m.lineage.as_ref().unwrap();
        assert_eq!((lin.job_id.as_str(), lin.run_id.as_str(), lin.dataset.as_str()), ("job-9", "job-9.1", "blobs@v1"));
        assert_eq!(lin.dataset_hash, "hash-of-blobs");
        assert_eq!(lin.params.get("optimizer.lr").map(String::as_str), Some("0.01"));
        assert!(m.metrics.contains_key("test_accuracy") && m.metrics.contains_key("train_loss"));
        let rec: ModelConfigRecord = serde_json::from_str(&m.config).unwrap();
        assert_eq!((rec.input_shape.clone(), rec.classes), (vec![4], 3));
        assert!(rec.normalization.mean > 50.0 && rec.normalization.std > 1.0, "{:?}", rec.normalization);
        // The weights are in the store and load back.
        let w = store.get(&aidos_sdk::BlobId::parse(&m.weights_blob).unwrap()).unwrap();
        aidos_kernels::load_model(&rec.model, &w).unwrap();
        assert_eq!(s.checkpoints.len(), 2);
        assert!(s.reports.iter().any(|r| r.dataset == "blobs@v1"));
        assert!(s.reports.iter().flat_map(|r| &r.points).any(|p| p.name == "val_accuracy"));
        assert!(s.reports.iter().all(|r| r.attempt.as_ref().unwrap().fencing_token == 101));
    }

    // Attempt 2 of the same job with 3 epochs: resumes from attempt 1's last checkpoint (step 30).
    let ctx = Context::new(env(dir.path(), &addr, 2)).unwrap();
    let mut out = Vec::new();
    let o = run(&ctx, &job(3), &mut out).unwrap();
    drop(ctx);
    assert_eq!(o.resumed_from_step, Some(30));
    assert_eq!(o.global_step, 45);
    assert_eq!(o.model.version, 2);
    assert!(state.lock().unwrap().reports.iter().any(|r| r.resumed_from_step == 30));

    // A fenced attempt stops with the scheduler's refusal.
    state.lock().unwrap().fenced = true;
    let ctx = Context::new(env(dir.path(), &addr, 3)).unwrap();
    let err = run(&ctx, &job(4), &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("stale"), "{err}");
}
