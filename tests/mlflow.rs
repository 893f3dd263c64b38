//! Issue #19, an MLflow-compatible tracking API: tests/python/mlflow_client.py, a plain script using the real
//! `mlflow` client from PyPI with only MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN pointing at aidos, sets an
//! experiment, logs params, metrics with steps, tags and artifacts, ends runs (one failed), searches runs with a
//! filter, reads metric history, lists and downloads artifacts, and registers a model version; then this test
//! checks through aidos's own gRPC API that the run, its params, metric history, tags, status, artifacts and the
//! registered model version are there, that `aidos run list` shows it, and that aidos refuses to serve that
//! version by name.

mod common;

use std::path::Path;
use std::process::Command;

use aidos_api::blob_service_client::BlobServiceClient;
use aidos_api::model_service_client::ModelServiceClient;
use aidos_api::run_service_client::RunServiceClient;
use aidos_api::v1::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mlflow_client_logs_to_aidos_unchanged() {
    let api = format!("127.0.0.1:{}", free_port());
    let mut c = start_cluster_with(1, &["--http", &api]).await;
    c.start_worker("w1", "2", "");
    // An aidos run, for the MLflow client to see beside its own.
    c.train_digits(1).await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(root.join("tests/python/mlflow_client.py"))
        .env("MLFLOW_TRACKING_URI", format!("http://{api}"))
        .env("MLFLOW_TRACKING_TOKEN", &*TOKEN)
        .env_remove("MLFLOW_EXPERIMENT_NAME")
        .current_dir(c.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        dump_logs(&c);
        panic!("the mlflow script failed:\n{text}");
    }
    let line =
        String::from_utf8_lossy(&out.stdout).lines().rev().find(|l| l.starts_with('{')).unwrap_or_default().to_string();
    let got: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {text}"));
    let run_id = got["run_id"].as_str().unwrap().to_string();
    assert!(run_id.starts_with("ml-"), "{got}");
    let aidos_runs: Vec<&str> = got["aidos_runs"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(aidos_runs.contains(&"job-1_1"), "the MLflow client does not see aidos's own run: {got}");

    // Through aidos's own API: the run with everything the script logged.
    let ch = c.any_channel().await;
    let run = RunServiceClient::new(ch.clone())
        .get(GetRunRequest { run_id: run_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.status, "FINISHED");
    assert!(run.ended_at_ms >= run.created_at_ms && run.ended_at_ms > 0, "{run:?}");
    assert_eq!(run.name, "sgd-baseline");
    assert_eq!(run.experiment_id, got["experiment_id"].as_str().unwrap());
    assert_eq!(run.params.get("lr").map(String::as_str), Some("0.05"));
    assert_eq!(run.params.get("batch_size").map(String::as_str), Some("64"));
    assert_eq!(run.tags.get("team").map(String::as_str), Some("vision"));
    let loss: Vec<(u64, f64)> = run.metrics.iter().filter(|p| p.name == "loss").map(|p| (p.step, p.value)).collect();
    assert_eq!(loss.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4], "{loss:?}");
    assert!((loss[4].1 - 0.2).abs() < 1e-12);
    let notes = run.artifacts.get("notes.txt").expect("notes.txt recorded").clone();
    assert!(run.artifacts.contains_key("model/MLmodel") && run.artifacts.contains_key("model/weights.bin"), "{run:?}");
    let mut data = Vec::new();
    let mut s = BlobServiceClient::new(ch.clone())
        .download(BlobDownloadRequest { id: notes, offset: 0 })
        .await
        .unwrap()
        .into_inner();
    while let Some(d) = s.message().await.unwrap() {
        data.extend_from_slice(&d.data);
    }
    assert_eq!(data, b"trained by a plain mlflow script\n");

    // The failed run is recorded as failed.
    let runs = RunServiceClient::new(ch.clone()).list(ListRunsRequest::default()).await.unwrap().into_inner().runs;
    let broken = runs.iter().find(|r| r.name == "broken").expect("the failed run");
    assert_eq!(broken.status, "FAILED");

    // The registered version, with its lineage and files.
    let mv = ModelServiceClient::new(ch.clone())
        .get(GetModelRequest { name: "digits-sgd".into(), version: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mv.lineage.as_ref().map(|l| l.run_id.as_str()), Some(run_id.as_str()));
    assert!(mv.artifacts.contains_key("mlflow/model/MLmodel"), "{mv:?}");
    assert_eq!(mv.metrics.get("accuracy"), Some(&0.91));

    // A body over the API's limit is refused whole (413) and the run is unchanged; a malformed one names why.
    let addr: std::net::SocketAddr = api.parse().unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", &*TOKEN);
    let big = format!(r#"{{"run_id": "{run_id}", "params": [{{"key": "pad", "value": "{}"}}]}}"#, "x".repeat(5 << 20));
    let (code, _) = http_with(addr, "POST", "/api/2.0/mlflow/runs/log-batch", &auth, &big);
    assert_eq!(code, 413);
    let (code, body) = http_with(addr, "POST", "/api/2.0/mlflow/runs/log-batch", &auth, "{not json");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("INVALID_PARAMETER_VALUE") && body.contains("not JSON"), "{body}");
    let again = RunServiceClient::new(ch.clone())
        .get(GetRunRequest { run_id: run_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.params.contains_key("pad"));

    // The CLI lists it as any run; aidos refuses to serve that version, saying why.
    let (code, out, err) = c.cli(&["run", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&run_id), "{out}");
    let (code, _, err) = c.cli(&["serve", "deploy", "digits-sgd:1"]);
    assert_ne!(code, 0);
    assert!(err.contains("registered through the MLflow API"), "{err}");
    kill_tasks_under(c.path());
}
