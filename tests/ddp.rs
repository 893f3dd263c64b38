//! Issue #15, "what must show": one `train` job of 4 data-parallel ranks across two workers; one rank is SIGKILLed
//! mid-epoch; no rank of that generation is left running; the gang restarts as a new generation, resumes from rank
//! 0's last checkpoint and the registered model reaches the MLP target. Bad input: `replicas = 0`, a gang larger
//! than the cluster could ever hold, and ranks whose models differ (refused at the rendezvous, by name).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aidos_api::run_service_client::RunServiceClient;
use aidos_api::v1::*;
use common::*;

const SPEC: &str = r#"
name = "mnist-ddp"
kind = "train"
replicas = 4
max_retries = 2
[resources]
cpu = 1
memory = "1Gi"
[train]
dataset = "mnist"
register_as = "mnist-ddp"
[train.config]
epochs = 10
batch_size = 64
seed = 1
checkpoint_every_steps = 40
log_every_steps = 20
[train.config.model]
name = "mlp"
layers = [784, 256, 128, 10]
[train.config.optimizer]
name = "adam"
lr = 0.001
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Pids of the processes of `job`'s tasks (shims and trainers; optionally only `rank` and/or `attempt`) in the
/// cluster whose directory is `dir`, found by their environment (`AIDOS_WORK_DIR` under `dir`: another cluster on
/// this machine has its own `job-2`).
fn rank_pids(dir: &Path, job: &str, rank: Option<u32>, attempt: Option<u32>) -> Vec<u32> {
    task_pids(dir, job, rank, attempt, "")
}

/// Waits (at most 10 s) until no process of `job` is left: its ranks and their shims, which exit a moment after
/// the status they wrote was reported, so a job can be finished while they are still on their way out.
async fn wait_all_gone(dir: &Path, job: &str) {
    let since = Instant::now();
    while !rank_pids(dir, job, None, None).is_empty() {
        assert!(since.elapsed() < Duration::from_secs(10), "still running: {:?}", rank_pids(dir, job, None, None));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`rank_pids`] whose command line contains `cmd`.
fn task_pids(dir: &Path, job: &str, rank: Option<u32>, attempt: Option<u32>, cmd: &str) -> Vec<u32> {
    let under = format!("AIDOS_WORK_DIR={}", dir.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let has = |k: &str, v: &str| vars.iter().any(|x| *x == format!("{k}={v}").as_bytes());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if has("AIDOS_JOB_ID", job)
            && vars.iter().any(|x| x.starts_with(under.as_bytes()))
            && String::from_utf8_lossy(&cmdline).contains(cmd)
            && (cmd.is_empty() || !String::from_utf8_lossy(&cmdline).contains("task-shim"))
            && rank.is_none_or(|r| has("AIDOS_RANK", &r.to_string()))
            && attempt.is_none_or(|a| has("AIDOS_ATTEMPT", &a.to_string()))
        {
            out.push(pid);
        }
    }
    out
}

async fn push_mnist(c: &Cluster) {
    let mnist = repo().join("data/mnist10k");
    let (code, _, err) =
        c.cli(&["dataset", "push", "mnist", mnist.to_str().unwrap(), "--split", "train=8000,test=2000"]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rank_restarts_the_gang_from_its_checkpoint_and_no_rank_hangs() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "2", "");
    c.start_worker("w2", "2", "");
    push_mnist(&c).await;
    let job = c.submit_train(SPEC);

    // Mid-epoch (125 steps per epoch), after a periodic checkpoint: kill rank 2 of generation 1.
    let ck_step = c.wait_checkpoint(&job, 160, Duration::from_secs(300)).await;
    let mut runs = RunServiceClient::new(c.any_channel().await);
    let j = c.wait_job(&job, Duration::from_secs(5), |_| true).await;
    assert_eq!(j.attempt, 1);
    let workers: std::collections::BTreeSet<_> = j.tasks.iter().map(|t| t.attempts[0].worker_id.clone()).collect();
    assert_eq!(workers.len(), 2, "the 4 ranks should span both workers: {j:#?}");
    let victim = task_pids(c.path(), &job, Some(2), Some(1), "train-run");
    assert_eq!(victim.len(), 1, "rank 2's trainer: {victim:?}");
    assert_eq!(task_pids(c.path(), &job, None, Some(1), "train-run").len(), 4);
    let killed_at = Instant::now();
    let _ = std::process::Command::new("kill").args(["-KILL", &victim[0].to_string()]).status();

    // Every rank of generation 1 is gone within a bound: none hangs in a collective.
    loop {
        let left = rank_pids(c.path(), &job, None, Some(1));
        if left.is_empty() {
            break;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "ranks of generation 1 still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("generation 1 gone {:?} after the kill", killed_at.elapsed());

    let j = c.wait_job(&job, Duration::from_secs(900), |j| JobState::try_from(j.state).unwrap().is_terminal()).await;
    assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}\n{}", c.cli(&["job", "logs", &job]).1);
    assert_eq!(j.attempt, 2);
    assert!(j.tasks.iter().all(|t| t.attempts.len() == 2 && t.attempts[1].state == TaskState::Succeeded as i32));
    wait_all_gone(c.path(), &job).await;

    let second =
        runs.get(GetRunRequest { run_id: format!("{job}.2"), ..Default::default() }).await.unwrap().into_inner();
    assert!(second.resumed_from_step >= ck_step, "resumed from {} (checkpoint at {ck_step})", second.resumed_from_step);
    // Every rank reported its own throughput.
    for r in 0..4 {
        let key = aidos_api::contract::rank_throughput_metric(r);
        assert!(second.metrics.iter().any(|p| p.name == key), "no {key} in run {job}.2");
    }

    let (code, out, err) = c.cli(&["-o", "json", "model", "show", "mnist-ddp"]);
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let acc = m["metrics"]["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "test accuracy {acc}");
    assert_eq!(m["version"], 1, "exactly one rank registers the model");

    // The job view names every rank, its worker and its throughput.
    let (code, out, err) = c.cli(&["job", "status", &job]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("SUCCEEDED") && l.contains("samples/s")).collect();
    assert_eq!(rows.len(), 4, "one row with a throughput per rank of the last generation:\n{out}");
}

/// The example program of the SDK (a user's own burn program), as `cargo build --example custom_training` builds it
/// (`scripts/test.sh` does, before the tests; what `cargo test --all-targets` builds of an example is not it).
fn custom_training() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_aidos")).parent().unwrap().join("examples/custom_training");
    assert!(p.exists(), "{} is missing: build it with `cargo build --example custom_training`", p.display());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_parallel_input_is_refused_by_name() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "2", "");
    push_mnist(&c).await;
    let dir = c.path().to_path_buf();

    // replicas = 0 and min_replicas above replicas: refused before anything is submitted.
    for (bad, needle) in [
        (SPEC.replace("replicas = 4", "replicas = 0"), "replicas"),
        (SPEC.replace("replicas = 4", "replicas = 2\nmin_replicas = 3"), "min_replicas"),
    ] {
        let p = dir.join("bad.toml");
        std::fs::write(&p, bad).unwrap();
        let (code, _, err) = c.cli(&["train", p.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(err.contains(needle), "error should name {needle}: {err}");
    }
    assert!(c.list_all().await.is_empty());

    // More ranks than the cluster could ever hold (2 cores, 1 core per rank).
    let p = dir.join("big.toml");
    std::fs::write(&p, SPEC.replace("replicas = 4", "replicas = 3")).unwrap();
    let (code, out, err) = c.cli(&["train", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let big = out.trim().to_string();
    let j = c.wait_job(&big, Duration::from_secs(30), |j| j.reason.contains("unschedulable")).await;
    assert!(j.reason.contains("gang of 3") && j.reason.contains("at most 2"), "{}", j.reason);
    let (code, _, err) = c.cli(&["job", "cancel", &big]);
    assert_eq!(code, 0, "{err}");

    // Two ranks of a user's program build different models: the rendezvous refuses, naming both, and the job
    // fails instead of hanging.
    let exe = custom_training();
    let script = format!("HIDDEN=$((32 + AIDOS_RANK * 16)) EPOCHS=1 exec {} mnist@v1 mismatched", exe.display());
    let (code, out, err) =
        c.cli(&["job", "submit", "--name", "mismatch", "--replicas", "2", "--cpu", "1", "--", "sh", "-c", &script]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let j = c.wait_job(&id, Duration::from_secs(120), |j| JobState::try_from(j.state).unwrap().is_terminal()).await;
    assert_eq!(state_of(&j), JobState::Failed, "{j:#?}");
    let (_, out, err) = c.cli(&["job", "logs", &id]);
    let logs = format!("{out}{err}\nreason: {}", j.reason);
    assert!(logs.contains("does not match") && logs.contains("784x32") && logs.contains("784x48"), "{logs}");
    wait_all_gone(c.path(), &id).await;
}
