//! The built-in trainer (`aidos train-run`) end to end against an in-process mock scheduler: a synthetic 3-class
//! dataset in a real blob store, training, progress lines, checkpoints, registration with lineage, resumption by
//! a retried attempt, and a fenced attempt stopping.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aidos_api::v1::*;
use aidos_sdk::{BlobStore, Context, LocalDirStore, TaskEnv};
use aidos_testkit::{MockScheduler, MockState};
use aidos_train::TrainConfig;
use aidos_train::builtin::{ModelConfigRecord, TrainJob, run};

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
        advertise_host: "127.0.0.1".into(),
        job_id: "job-9".into(),
        rank: 0,
        world_size: 1,
        attempt,
        fencing_token: 100 + attempt as u64,
        worker_id: "w-1".into(),
        schedulers: vec![addr.to_string()],
        work_dir: blobs.to_path_buf(),
        blob_dir: blobs.to_path_buf(),
        blob_cache_max_bytes: None,
        s3: None,
        credentials: Default::default(),
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
        resume_from: String::new(),
    }
}

#[test]
fn builtin_trainer_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(dir.path()).unwrap();
    let state = Arc::new(Mutex::new(MockState { manifest: blobs_manifest(&store), ..Default::default() }));
    let addr = MockScheduler(state.clone()).serve();

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
        aidos_train::load_model(&rec.model, &w).unwrap();
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
    assert_eq!(o.model.as_ref().unwrap().version, 2);
    assert!(state.lock().unwrap().reports.iter().any(|r| r.resumed_from_step == 30));

    // A fenced attempt stops with the scheduler's refusal.
    state.lock().unwrap().fenced = true;
    let ctx = Context::new(env(dir.path(), &addr, 3)).unwrap();
    let err = run(&ctx, &job(4), &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("stale"), "{err}");
}

/// A run paused after its first epoch of three (`stop_after_epochs`) registers nothing; a second job resuming from
/// it (`resume_from`) registers the very weights of an uninterrupted three-epoch run; and a job told to resume from
/// a job without a checkpoint refuses to train from scratch.
#[test]
fn a_paused_run_resumed_by_another_job_trains_what_one_run_trains() {
    let straight = {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let state = Arc::new(Mutex::new(MockState { manifest: blobs_manifest(&store), ..Default::default() }));
        let addr = MockScheduler(state.clone()).serve();
        let ctx = Context::new(env(dir.path(), &addr, 1)).unwrap();
        run(&ctx, &job(3), &mut Vec::new()).unwrap();
        let s = state.lock().unwrap();
        parameters(&store, s.registers.last().unwrap().model.as_ref().unwrap())
    };

    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(dir.path()).unwrap();
    let state = Arc::new(Mutex::new(MockState { manifest: blobs_manifest(&store), ..Default::default() }));
    let addr = MockScheduler(state.clone()).serve();
    // A job told to continue another that never checkpointed: refused, by name.
    let mut next = job(3);
    next.resume_from = "job-1".into();
    let ctx = Context::new(env(dir.path(), &addr, 1)).unwrap();
    let err = run(&ctx, &next, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("resumes from job job-1"), "{err}");
    drop(ctx);

    let mut first = job(3);
    first.config.stop_after_epochs = Some(1);
    let ctx = Context::new(env(dir.path(), &addr, 1)).unwrap();
    let mut out = Vec::new();
    let o = run(&ctx, &first, &mut out).unwrap();
    drop(ctx);
    let text = String::from_utf8(out).unwrap();
    assert!(o.model.is_none() && o.global_step == 15, "{text}");
    assert!(text.contains("paused after epoch 1 of 3"), "{text}");
    assert!(state.lock().unwrap().registers.is_empty());

    let ctx = Context::new(env(dir.path(), &addr, 1)).unwrap();
    let o = run(&ctx, &next, &mut Vec::new()).unwrap();
    assert_eq!((o.resumed_from_step, o.global_step), (Some(15), 45));
    let resumed = o.model.unwrap();
    let s = state.lock().unwrap();
    let m = s.registers.last().unwrap().model.as_ref().unwrap();
    assert_eq!(resumed.version, 1);
    assert!(parameters(&store, m) == straight, "paused and resumed: the same weights as one uninterrupted run");
}

/// A registered model's parameter values.
fn parameters(store: &LocalDirStore, m: &aidos_api::v1::ModelVersion) -> Vec<f32> {
    let rec: ModelConfigRecord = serde_json::from_str(&m.config).unwrap();
    let w = store.get(&aidos_sdk::BlobId::parse(&m.weights_blob).unwrap()).unwrap();
    aidos_train::load_model(&rec.model, &w).unwrap().parameters()
}
