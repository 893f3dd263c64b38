//! Issue #3, "what must show": MNIST pushed as a dataset version, the reference MLP trained by a `train` job;
//! the worker (and its trainer) is SIGKILLed mid-training; the retried attempt resumes from the last checkpoint
//! (not from step 0) on another worker and the registered model still reaches the accuracy target.

mod common;

use std::path::Path;
use std::time::Duration;

use aidos_api::run_service_client::RunServiceClient;
use aidos_api::v1::*;
use common::*;

const SPEC: &str = r#"
name = "mnist-mlp"
kind = "train"
max_retries = 2
[resources]
cpu = 2
memory = "2Gi"
[train]
dataset = "mnist"
register_as = "mnist-mlp"
[train.config]
epochs = 10
batch_size = 64
seed = 1
checkpoint_every_steps = 100
log_every_steps = 25
[train.config.model]
name = "mlp"
layers = [784, 256, 128, 10]
activation = "relu"
[train.config.optimizer]
name = "adam"
lr = 0.001
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_training_resumes_from_its_checkpoint_and_reaches_the_target() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "2", "");
    let mnist = repo().join("data/mnist10k");
    let (code, out, err) =
        c.cli(&["dataset", "push", "mnist", mnist.to_str().unwrap(), "--split", "train=8000,test=2000"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mnist@v1") && out.contains("10000 rows"), "{out}");

    let job = c.submit_train(SPEC);

    // Wait for the first periodic checkpoint, then kill the worker with its trainer.
    let ck_step = c.wait_checkpoint(&job, 100, Duration::from_secs(240)).await;
    let mut runs = RunServiceClient::new(c.any_channel().await);
    c.kill_worker_and_tasks("w1");
    c.start_worker("w2", "2", "");

    let j = c.wait_job(&job, Duration::from_secs(600), |j| JobState::try_from(j.state).unwrap().is_terminal()).await;
    assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}");
    assert_eq!(j.attempt, 2);
    assert_eq!(j.tasks[0].attempts[1].worker_id, "w2");

    let second =
        runs.get(GetRunRequest { run_id: format!("{job}.2"), ..Default::default() }).await.unwrap().into_inner();
    assert!(
        second.resumed_from_step >= ck_step,
        "resumed from {} but a checkpoint at {ck_step} existed",
        second.resumed_from_step
    );
    let first_step_reported = second.metrics.iter().map(|p| p.step).min().unwrap();
    assert!(first_step_reported > second.resumed_from_step, "the retry started over at step {first_step_reported}");

    let (code, out, err) = c.cli(&["-o", "json", "model", "show", "mnist-mlp"]);
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let acc = m["metrics"]["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "test accuracy {acc}");
    assert_eq!(m["lineage"]["dataset"], "mnist@v1");
    assert_eq!(m["lineage"]["run_id"], format!("{job}.2"));

    // The registry's own evaluation agrees, and aliases work.
    let (code, out, err) = c.cli(&["model", "alias", "mnist-mlp@production", "1"]);
    assert_eq!(code, 0, "{err}{out}");
    let (code, out, err) =
        c.cli(&["-o", "json", "model", "eval", "mnist-mlp@production", "--dataset", "mnist@v1", "--split", "test"]);
    assert_eq!(code, 0, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!((e["accuracy"].as_f64().unwrap() - acc).abs() < 1e-6, "eval {} vs registered {acc}", e["accuracy"]);
    assert_eq!(e["confusion"].as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_training_input_is_refused_by_name_and_leaves_nothing() {
    let c = start_cluster(1).await;
    let dir = c.path().to_path_buf();

    // A truncated IDX file: refused, nothing stored, no version created.
    let images = std::fs::read(repo().join("data/mnist10k/images-idx3-ubyte.gz")).unwrap();
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("images-idx3-ubyte.gz"), &images[..images.len() / 2]).unwrap();
    std::fs::copy(repo().join("data/mnist10k/labels-idx1-ubyte.gz"), bad.join("labels-idx1-ubyte.gz")).unwrap();
    let (code, _, err) = c.cli(&["dataset", "push", "broken", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("images-idx3-ubyte.gz"), "{err}");
    let stored = std::fs::read_dir(c.blob_dir()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 0, "a refused push wrote blobs");
    let (_, out, _) = c.cli(&["dataset", "list"]);
    assert!(!out.contains("broken"), "{out}");

    // A CSV whose label column is not numeric.
    let csv = dir.join("bad.csv");
    std::fs::write(&csv, "a,b,label\n1,2,0\n3,4,cat\n").unwrap();
    let (code, _, err) = c.cli(&["dataset", "push", "csvbad", csv.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("label") && err.contains('3'), "{err}");

    let mnist = repo().join("data/mnist10k");
    let (code, _, err) =
        c.cli(&["dataset", "push", "mnist", mnist.to_str().unwrap(), "--split", "train=8000,test=2000"]);
    assert_eq!(code, 0, "{err}");

    let cases = [
        (SPEC.replace("name = \"mlp\"", "name = \"resnet9000\""), "resnet9000"),
        (SPEC.replace("layers = [784, 256, 128, 10]", "layers = [784, 0, 128, 10]"), "layers[1]"),
        (SPEC.replace("dataset = \"mnist\"", "dataset = \"mnist@v7\""), "mnist@v7"),
        (SPEC.replace("dataset = \"mnist\"", "dataset = \"nope\""), "nope"),
    ];
    for (i, (spec, needle)) in cases.iter().enumerate() {
        let p = dir.join(format!("bad{i}.toml"));
        std::fs::write(&p, spec).unwrap();
        let (code, _, err) = c.cli(&["train", p.to_str().unwrap()]);
        assert_ne!(code, 0, "case {i}");
        assert!(err.contains(needle), "case {i}: error should name {needle}: {err}");
    }
    assert!(c.list_all().await.is_empty(), "a refused training spec submitted a job");
}
