//! Issue "A control plane that runs for months", what must show: GC never deletes a referenced blob. A real cluster
//! collects garbage fast (every 200 ms, grace [`GRACE`] s) and keeps one finished job, while:
//! (a) datasets are pushed whose blobs already exist in the store, unreferenced and as old as a blob the collector
//!     takes — re-put through the shared directory and through the blob service (which skips the upload after `Has`),
//!     then committed only after a collection round provably ran (it took an equally old unreferenced blob); and an
//!     `aidos dataset push` races the collector end to end;
//! (b) a training job records a checkpoint every few steps and registers its model;
//! then retention compacts the training job (a later job finished): its run, checkpoints and model stay.
//! Afterwards every blob the cluster references is in the store and reads back (hash-verified), while the old
//! unreferenced blobs were collected, so the test cannot pass with a collector that does nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aidos_api::dataset_service_client::DatasetServiceClient;
use aidos_api::model_service_client::ModelServiceClient;
use aidos_api::run_service_client::RunServiceClient;
use aidos_api::v1::*;
use aidos_blob::{BlobId, BlobStore, LocalDirStore, ServiceStore};
use aidos_datasets::{IngestOptions, Source, SplitSpec, ingest_table};
use common::*;

/// The collector's grace period, in seconds.
const GRACE: u64 = 6;

const TRAIN: &str = r#"
name = "digits"
kind = "train"
[resources]
cpu = 1
memory = "1Gi"
[train]
dataset = "mnist"
register_as = "digits"
[train.config]
epochs = 1
batch_size = 64
seed = 1
checkpoint_every_steps = 5
[train.config.model]
name = "mlp"
layers = [784, 32, 10]
activation = "relu"
[train.config.optimizer]
name = "adam"
lr = 0.001
"#;

fn mnist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist10k")
}

fn opts(chunk_rows: usize) -> IngestOptions {
    IngestOptions { chunk_rows, splits: SplitSpec::parse("train=8000,test=2000").unwrap() }
}

/// Sets every blob's modified time to `t`, as if each had last been put then.
fn age_all(store: &LocalDirStore, t: SystemTime) {
    for b in store.list().unwrap() {
        let path = store.root().join(&b.id.as_str()[..2]).join(b.id.as_str());
        std::fs::File::options().append(true).open(&path).unwrap().set_modified(t).unwrap();
    }
}

fn manifest_blobs(m: &DatasetManifest) -> Vec<String> {
    let chunks = m.feature_chunks.iter().chain(&m.label_chunks).map(|c| c.blob.clone());
    chunks.chain([m.row_hashes_blob.clone()]).filter(|b| !b.is_empty()).collect()
}

/// Polls `done` every 50 ms until it holds, or panics after `within` naming `what`.
async fn wait_until(c: &Cluster, within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            dump_logs(c);
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every blob the cluster's state references, read through its APIs.
async fn referenced(c: &Cluster) -> Vec<(String, String)> {
    let ch = c.any_channel().await;
    let mut out = Vec::new();
    let datasets = DatasetServiceClient::new(ch.clone()).list(ListDatasetsRequest::default()).await.unwrap();
    for d in datasets.into_inner().datasets {
        out.extend(manifest_blobs(&d).into_iter().map(|b| (format!("dataset {}@v{}", d.name, d.version), b)));
    }
    let runs = RunServiceClient::new(ch.clone()).list(ListRunsRequest::default()).await.unwrap();
    for r in runs.into_inner().runs {
        out.extend(r.checkpoints.iter().map(|ck| (format!("run {} checkpoint {}", r.id, ck.step), ck.blob.clone())));
    }
    let models = ModelServiceClient::new(ch).list(ListModelsRequest::default()).await.unwrap();
    for m in models.into_inner().models {
        let what = format!("model {}:{}", m.name, m.version);
        out.push((what.clone(), m.weights_blob.clone()));
        out.extend(m.artifacts.values().map(|b| (what.clone(), b.clone())));
    }
    out
}

async fn commit(c: &Cluster, m: DatasetManifest) -> Result<DatasetManifest, tonic::Status> {
    let mut ds = DatasetServiceClient::new(c.any_channel().await);
    ds.commit(CommitDatasetRequest { manifest: Some(m) }).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_never_deletes_a_referenced_blob() {
    let grace = GRACE.to_string();
    let mut c = start_cluster_with(
        1,
        &[
            "--blob-gc-interval-secs",
            "0.2",
            "--blob-gc-grace-secs",
            &grace,
            "--retain-finished-jobs",
            "1",
            "--retention-interval-secs",
            "0.3",
        ],
    )
    .await;
    c.start_worker("w1", "2", "");
    let store = LocalDirStore::open(c.blob_dir()).unwrap();
    let table = Source::detect(&mnist(), None).unwrap().read().unwrap();

    // ---- (a) Old, unreferenced blobs: two chunkings of MNIST stored but never committed, and one junk blob.
    let t = Instant::now();
    let local = ingest_table("mnist", &table, &opts(4096), &store).unwrap();
    let ingest_time = t.elapsed();
    let served = ingest_table("mnist-svc", &table, &opts(3000), &store).unwrap();
    let junk = store.put(b"an old blob that nothing references").unwrap();
    // They become collectable `lead` from now: enough to put them all again first, so the collector's round that
    // takes the junk blob is one where these would go too, were the re-puts not refreshing them; and less than the
    // grace period, so the re-put blobs are still young then (and until they are committed right after).
    let lead =
        (ingest_time * 4).clamp(Duration::from_secs(2), Duration::from_secs(GRACE) - Duration::from_millis(1500));
    eprintln!("ingest took {ingest_time:?}; lead {lead:?}");
    age_all(&store, SystemTime::now() - Duration::from_secs(GRACE) + lead);
    let aged = Instant::now();
    // Re-put: through the shared directory, and through the blob service (`Has` with refresh; no upload).
    let again = ingest_table("mnist", &table, &opts(4096), &LocalDirStore::open(c.blob_dir()).unwrap()).unwrap();
    assert_eq!(manifest_blobs(&again), manifest_blobs(&local), "content-addressed: the same blobs");
    let addrs = c.addrs();
    let (t2, o2) = (table.clone(), opts(3000));
    let via_service = tokio::task::spawn_blocking(move || {
        let svc = ServiceStore::connect(&addrs, aidos_api::auth::Credentials::token(common::TOKEN.clone())).unwrap();
        ingest_table("mnist-svc", &t2, &o2, &svc).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(manifest_blobs(&via_service), manifest_blobs(&served));
    assert!(
        aged.elapsed() + Duration::from_millis(500) < lead,
        "the re-puts took {:?}, too long for a lead of {lead:?}: the test could not show the refresh",
        aged.elapsed()
    );
    assert!(store.contains(&junk).unwrap(), "nothing is collectable yet");
    // A round after they became collectable: the junk blob goes.
    wait_until(&c, lead + Duration::from_secs(15), "the old unreferenced blob collected", || {
        !store.contains(&junk).unwrap()
    })
    .await;
    for m in [again, via_service] {
        let name = m.name.clone();
        let r = commit(&c, m).await;
        assert!(r.is_ok(), "committing {name} after a collection round: {r:?}");
    }

    // The CLI's push races the collector end to end: its blobs (chunked by 2500) exist, old and unreferenced.
    let cli_chunks = ingest_table("mnist-cli", &table, &opts(2500), &store).unwrap();
    let junk2 = store.put(b"another old blob that nothing references").unwrap();
    let old = SystemTime::now() - Duration::from_secs(GRACE + 3600);
    for id in manifest_blobs(&cli_chunks).iter().map(String::as_str).chain([junk2.as_str()]) {
        let path = store.root().join(&id[..2]).join(id);
        std::fs::File::options().append(true).open(&path).unwrap().set_modified(old).unwrap();
    }
    let (code, out, err) = c.cli(&[
        "dataset",
        "push",
        "mnist-cli",
        mnist().to_str().unwrap(),
        "--split",
        "train=8000,test=2000",
        "--chunk-rows",
        "2500",
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // ---- (b) Training records a checkpoint every 5 steps while the collector runs.
    let spec = c.path().join("train.toml");
    std::fs::write(&spec, TRAIN).unwrap();
    let (code, out, err) = c.cli(&["train", spec.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let train_job = out.trim().to_string();
    let j = c.wait_job(&train_job, Duration::from_secs(300), |j| state_of(j).is_terminal()).await;
    assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}");
    let mut runs = RunServiceClient::new(c.any_channel().await);
    let run =
        runs.list(ListRunsRequest { job_id: train_job.clone(), ..Default::default() }).await.unwrap().into_inner().runs;
    assert!(run.iter().map(|r| r.checkpoints.len()).sum::<usize>() >= 10, "checkpoints recorded: {run:#?}");
    let log_blobs: Vec<String> =
        j.tasks.iter().flat_map(|t| &t.attempts).map(|a| a.log_blob.clone()).filter(|b| !b.is_empty()).collect();
    let task_log = c.path().join("node1/task-logs").join(format!("{train_job}.log"));

    // ---- Retention keeps one finished job: once a later job finished, the training job is compacted.
    let mut jobs = c.jobs().await;
    let later = jobs.submit(SubmitRequest { spec: Some(sh_job("later", "true", 100, 0)), request_id: String::new() });
    let later = later.await.unwrap().into_inner().job_id;
    c.wait_job(&later, Duration::from_secs(60), |j| state_of(j) == JobState::Succeeded).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.jobs().await.get(GetJobRequest { job_id: train_job.clone() }).await;
        match r {
            Err(s) if s.code() == tonic::Code::NotFound => break,
            _ if Instant::now() > deadline => {
                dump_logs(&c);
                panic!("{train_job} was not compacted: {r:?}");
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let run =
        runs.list(ListRunsRequest { job_id: train_job.clone(), ..Default::default() }).await.unwrap().into_inner().runs;
    assert!(!run.is_empty() && run.iter().all(|r| !r.checkpoints.is_empty()), "its run stays: {run:#?}");
    wait_until(&c, Duration::from_secs(10), "the compacted job's task log removed", || !task_log.exists()).await;
    // The blobs only the compacted job named (its output) are collected after the grace period.
    for b in &log_blobs {
        let id = BlobId::parse(b).unwrap();
        wait_until(&c, Duration::from_secs(GRACE + 15), "the compacted job's log blob collected", || {
            !store.contains(&id).unwrap()
        })
        .await;
    }

    // ---- Every referenced blob is there and reads back; the old unreferenced ones are gone.
    let refs = referenced(&c).await;
    let kinds = ["dataset mnist@v1", "dataset mnist-svc@v1", "dataset mnist-cli@v1", "run ", "model digits:1"];
    for k in kinds {
        assert!(refs.iter().any(|(what, _)| what.starts_with(k)), "no {k} among {} references", refs.len());
    }
    for (what, blob) in &refs {
        let id = BlobId::parse(blob).unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Err(e) = store.get(&id) {
            dump_logs(&c);
            panic!("{what} references {blob}, which the store lost: {e}");
        }
    }
    assert!(!store.contains(&junk).unwrap());
    wait_until(&c, Duration::from_secs(15), "the second old unreferenced blob collected", || {
        !store.contains(&junk2).unwrap()
    })
    .await;
    let node = c.nodes[&1].1.output();
    assert!(node.contains("blob gc: deleted"), "the collector logs what it deletes");
}
