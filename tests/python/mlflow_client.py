"""An ordinary MLflow tracking script, run unchanged against aidos (tests/mlflow.rs runs it).

MLFLOW_TRACKING_URI points at the scheduler's HTTP API and MLFLOW_TRACKING_TOKEN carries an aidos token; nothing
else knows about aidos. Prints one JSON line with what it logged, for the test to check through aidos's own API.
"""

import json
import os
import sys
import tempfile

import mlflow
from mlflow import MlflowClient

mlflow.set_experiment("digits-mlflow")
with mlflow.start_run(run_name="sgd-baseline") as run:
    mlflow.log_param("lr", 0.05)
    mlflow.log_params({"batch_size": 64, "optimizer": "sgd"})
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_metrics({"accuracy": 0.91, "f1": 0.9}, step=4)
    mlflow.set_tag("team", "vision")
    with tempfile.TemporaryDirectory() as d:
        notes = os.path.join(d, "notes.txt")
        with open(notes, "w") as f:
            f.write("trained by a plain mlflow script\n")
        mlflow.log_artifact(notes)
        model_dir = os.path.join(d, "model")
        os.makedirs(model_dir)
        with open(os.path.join(model_dir, "MLmodel"), "w") as f:
            f.write("flavors: {}\n")
        with open(os.path.join(model_dir, "weights.bin"), "wb") as f:
            f.write(bytes(range(256)) * 64)
        mlflow.log_artifacts(model_dir, artifact_path="model")
    run_id = run.info.run_id
    artifact_uri = run.info.artifact_uri

# A run that fails is recorded as failed.
try:
    with mlflow.start_run(run_name="broken"):
        mlflow.log_param("lr", 5.0)
        raise RuntimeError("diverged")
except RuntimeError:
    pass

client = MlflowClient()
# Re-logging a param with another value is refused, as MLflow does.
try:
    client.log_param(run_id, "lr", 0.5)
    sys.exit("a param changed value")
except mlflow.exceptions.MlflowException as e:
    assert "lr" in str(e), e

finished = client.get_run(run_id)
assert finished.info.status == "FINISHED", finished.info
assert finished.data.params["lr"] == "0.05", finished.data.params
assert finished.data.metrics["accuracy"] == 0.91, finished.data.metrics
assert finished.data.tags["team"] == "vision", finished.data.tags
history = client.get_metric_history(run_id, "loss")
assert [m.step for m in history] == [0, 1, 2, 3, 4], history
assert abs(history[-1].value - 0.2) < 1e-9, history

exp = client.get_experiment_by_name("digits-mlflow")
runs = client.search_runs([exp.experiment_id], filter_string="metrics.accuracy > 0.9", order_by=["attributes.start_time DESC"])
assert [r.info.run_id for r in runs] == [run_id], [r.info.run_id for r in runs]
failed = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FAILED'")
assert len(failed) == 1 and failed[0].info.run_name == "broken", failed

files = sorted(f.path for f in client.list_artifacts(run_id))
assert files == ["model", "notes.txt"], files
inner = sorted(f.path for f in client.list_artifacts(run_id, "model"))
assert inner == ["model/MLmodel", "model/weights.bin"], inner
with tempfile.TemporaryDirectory() as d:
    got = client.download_artifacts(run_id, "notes.txt", d)
    assert open(got).read() == "trained by a plain mlflow script\n"

client.create_registered_model("digits-sgd")
mv = client.create_model_version("digits-sgd", f"{artifact_uri}/model", run_id)
assert mv.version in ("1", 1), mv
assert client.get_registered_model("digits-sgd").latest_versions[0].version in ("1", 1)
versions = client.search_model_versions("name='digits-sgd'")
assert len(versions) == 1 and versions[0].run_id == run_id, versions

# aidos's own runs show too (experiment 0, Default), read-only.
aidos_runs = client.search_runs(["0"])
print(json.dumps({
    "run_id": run_id,
    "experiment_id": exp.experiment_id,
    "artifact_uri": artifact_uri,
    "model_version": str(mv.version),
    "aidos_runs": [r.info.run_id for r in aidos_runs],
}))
