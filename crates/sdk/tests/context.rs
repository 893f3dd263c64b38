//! The SDK against an in-process mock scheduler (DatasetService, RunService, ModelService): address failover,
//! retry on UNAVAILABLE, metric batching, checkpoint round trip, model registration with lineage, fencing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aidos_api::v1::*;
use aidos_sdk::{BlobStore, Context, LocalDirStore, NewModel, SdkError, TaskEnv};
use aidos_testkit::{MockScheduler, MockState};

fn toy_manifest(store: &LocalDirStore) -> DatasetManifest {
    let feats: Vec<u8> = (0..4).flat_map(|r| [r as f32, -(r as f32)]).flat_map(f32::to_le_bytes).collect();
    let labels: Vec<u8> = [0u32, 1, 0, 1].iter().flat_map(|l| l.to_le_bytes()).collect();
    DatasetManifest {
        name: "toy".into(),
        version: 1,
        format: "csv".into(),
        row_shape: vec![2],
        dtype: "f32".into(),
        rows: 4,
        feature_chunks: vec![ChunkRef { blob: store.put(&feats).unwrap().to_string(), rows: 4, bytes: 32 }],
        label_chunks: vec![ChunkRef { blob: store.put(&labels).unwrap().to_string(), rows: 4, bytes: 16 }],
        splits: vec![Split { name: "train".into(), start: 0, end: 3 }, Split { name: "test".into(), start: 3, end: 4 }],
        content_hash: "abc123".into(),
        num_classes: 2,
        ..Default::default()
    }
}

fn env(blobs: &Path, schedulers: Vec<String>) -> TaskEnv {
    TaskEnv {
        advertise_host: "127.0.0.1".into(),
        job_id: "job-1".into(),
        rank: 0,
        world_size: 1,
        attempt: 2,
        fencing_token: 42,
        worker_id: "w-1".into(),
        schedulers,
        work_dir: blobs.to_path_buf(),
        blob_dir: blobs.to_path_buf(),
        blob_cache_max_bytes: None,
        s3: None,
        credentials: Default::default(),
    }
}

#[test]
fn context_end_to_end_against_a_mock_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(dir.path()).unwrap();
    let state = Arc::new(Mutex::new(MockState { manifest: toy_manifest(&store), ..Default::default() }));
    let addr = MockScheduler(state.clone()).serve();
    // The first address is dead: every call must fail over to the mock.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let ctx = Context::new(env(dir.path(), vec![dead, addr])).unwrap();

    // Datasets.
    let m = ctx.dataset("toy@v1").unwrap();
    assert_eq!(m.content_hash, "abc123");
    let err = ctx.dataset("toy@v9").unwrap_err();
    assert!(matches!(err, SdkError::DatasetNotFound { .. }), "{err}");
    assert!(err.to_string().contains("toy@v9"), "{err}");
    assert!(matches!(ctx.dataset("toy@9").unwrap_err(), SdkError::BadDatasetRef { .. }));
    let train = ctx.load_split(&m, "train").unwrap();
    assert_eq!(train.labels, vec![0, 1, 0]);
    assert_eq!(train.features, vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);

    // Params and dataset go out at once; metrics are buffered until flush.
    let params: BTreeMap<String, String> = [("lr".to_string(), "0.001".to_string())].into();
    ctx.log_params(&params).unwrap();
    ctx.log_dataset(&m).unwrap();
    ctx.log_resumed_from(7).unwrap();
    let n0 = state.lock().unwrap().reports.len();
    assert_eq!(n0, 3);
    ctx.log_metrics(1, 0, &[("train_loss", 0.5), ("lr", 0.001)]).unwrap();
    assert_eq!(state.lock().unwrap().reports.len(), n0, "a single point is buffered");
    ctx.flush().unwrap();
    {
        let s = state.lock().unwrap();
        assert_eq!(s.reports[0].params.get("lr").map(String::as_str), Some("0.001"));
        assert_eq!(s.reports[1].dataset, "toy@v1");
        assert_eq!(s.reports[2].resumed_from_step, 7);
        let last = s.reports.last().unwrap();
        assert_eq!(last.worker_id, "w-1");
        let a = last.attempt.clone().unwrap();
        assert_eq!((a.job_id.as_str(), a.rank, a.attempt, a.fencing_token), ("job-1", 0, 2, 42));
        assert_eq!(last.points.len(), 2);
        assert_eq!((last.points[0].step, last.points[0].name.as_str(), last.points[0].value), (1, "train_loss", 0.5));
        assert!(last.params.is_empty() && last.dataset.is_empty() && last.resumed_from_step == 0);
    }
    // 500 points trigger a send without flush().
    let before = state.lock().unwrap().reports.len();
    for step in 0..250 {
        ctx.log_metrics(step, 0, &[("a", 1.0), ("b", 2.0)]).unwrap();
    }
    assert_eq!(state.lock().unwrap().reports.len(), before + 1);
    assert_eq!(state.lock().unwrap().reports.last().unwrap().points.len(), 500);

    // UNAVAILABLE (an election) is retried.
    state.lock().unwrap().unavailable_left = 3;
    ctx.log_params(&params).unwrap();
    assert_eq!(state.lock().unwrap().unavailable_left, 0);

    // Checkpoints: none yet, then a round trip through the blob store.
    assert!(ctx.latest_checkpoint().unwrap().is_none());
    let id = ctx.save_checkpoint(30, 1, b"checkpoint bytes").unwrap();
    let (ck, bytes) = ctx.latest_checkpoint().unwrap().unwrap();
    assert_eq!((ck.step, ck.epoch, ck.blob.as_str()), (30, 1, id.as_str()));
    assert_eq!(bytes, b"checkpoint bytes");

    // Model registration: weights in the store, lineage filled in, fenced by the attempt.
    let mv = ctx
        .register_model(
            &NewModel::new("toy-mlp", r#"{"model":{}}"#).with_dataset(&m).metric("test_accuracy", 0.9),
            b"w",
        )
        .unwrap();
    assert_eq!(mv.version, 1);
    {
        let s = state.lock().unwrap();
        let r = s.registers.last().unwrap();
        let a = r.attempt.clone().unwrap();
        assert_eq!((r.worker_id.as_str(), a.fencing_token), ("w-1", 42));
        let lin = r.model.as_ref().unwrap().lineage.clone().unwrap();
        assert_eq!((lin.job_id.as_str(), lin.run_id.as_str()), ("job-1", "job-1.2"));
        assert_eq!((lin.dataset.as_str(), lin.dataset_hash.as_str()), ("toy@v1", "abc123"));
        assert_eq!(lin.aidos_version, aidos_sdk::AIDOS_VERSION);
        let wb = aidos_sdk::BlobId::parse(&r.model.as_ref().unwrap().weights_blob).unwrap();
        assert_eq!(&*store.get(&wb).unwrap(), b"w");
    }
    assert!(ctx.register_model(&NewModel::new("bad name", "{}"), b"w").is_err());

    // Fenced: every write says so.
    state.lock().unwrap().fenced = true;
    ctx.log_metrics(31, 1, &[("x", 1.0)]).unwrap();
    let e = ctx.flush().unwrap_err();
    assert!(e.is_fenced(), "{e}");
    assert!(ctx.save_checkpoint(32, 1, b"late").unwrap_err().is_fenced());
    assert!(ctx.register_model(&NewModel::new("toy-mlp", "{}"), b"w").unwrap_err().is_fenced());
    // The refused points were dropped: nothing is left to resend on drop.
    ctx.flush().unwrap();
}
