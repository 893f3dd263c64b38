//! Issue #16, hyperparameter sweeps, end to end through the CLI:
//! - a `process` trial of the user's kind (a shell script minimising a known function, reading its parameters from
//!   the environment and the JSON file, reporting through `aidos report`, the SDK's report path) is tuned by TPE and pruned by ASHA, and every pruning was right;
//! - the scheduler leader and a worker are SIGKILLed mid-sweep: the sweep completes with exactly the configured
//!   number of trials, none counted twice;
//! - bad sweep specs are refused naming the field, and an objective no trial reports fails the sweep, naming it;
//! - a `train` sweep on MNIST (ASHA over the model family) registers its best model as NAME@best-<sweep>, with the
//!   sweep in its lineage.

mod common;

use std::time::{Duration, Instant};

use aidos_api::v1::*;
use common::*;

/// A trial that reports `objective` = (x - 0.3)^2 + 1/step at steps 1..=STEPS, a little apart.
fn quadratic_trial(steps: u32, pause: &str) -> String {
    format!(
        r#"
[trial]
max_retries = 3
[trial.resources]
cpu = "100m"
memory = "32Mi"
[trial.process]
executable = "sh"
args = ["-c", '''
# The parameters come as JSON twice: in AIDOS_TRIAL_PARAMS and in the file AIDOS_TRIAL_PARAMS_FILE names.
[ "$(cat "$AIDOS_TRIAL_PARAMS_FILE")" = "$AIDOS_TRIAL_PARAMS" ] || exit 4
case "$AIDOS_TRIAL_PARAMS" in *'"x":'*) ;; *) exit 5 ;; esac
s=1
while [ $s -le {steps} ]; do
  v=$(awk -v x="$X" -v s="$s" 'BEGIN {{ printf "%.6f", (x - 0.3) ^ 2 + 1 / s }}')
  "$AIDOS_BIN" report --step "$s" objective="$v" || exit 3
  sleep {pause}
  s=$((s + 1))
done
''']
env = {{ X = "${{x}}", AIDOS_BIN = "{bin}" }}
"#,
        bin = BIN
    )
}

fn write(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn status_json(c: &Cluster, id: &str) -> serde_json::Value {
    let (code, out, err) = c.cli(&["-o", "json", "sweep", "status", id]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

async fn wait_sweep(
    c: &Cluster,
    id: &str,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let s = status_json(c, id);
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            dump_logs(c);
            panic!("sweep {id} did not get there in {within:?}: {s:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One scheduler node, a 4-core worker, and MNIST pushed as `mnist` with `splits`.
async fn mnist_cluster(splits: &str) -> Cluster {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "4", "");
    let mnist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist10k");
    let (code, _, err) = c.cli(&["dataset", "push", "mnist", mnist.to_str().unwrap(), "--split", splits]);
    assert_eq!(code, 0, "{err}");
    c
}

fn ended(s: &serde_json::Value) -> bool {
    s["state"] != "RUNNING" && s["trials"].as_array().unwrap().iter().all(|t| t["state"] != "RUNNING")
}

/// The value a trial had at `resource` (its first report at or past it).
fn value_at(t: &serde_json::Value, resource: u64) -> Option<f64> {
    t["values"].as_array()?.iter().find(|v| v[0].as_u64().unwrap() >= resource).map(|v| v[1].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_trial_is_tuned_and_pruned_and_bad_input_is_refused() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "8", "");

    // ---- bad input: refused before anything is stored, naming the field.
    let base = |params: &str, extra: &str| {
        format!(
            "name = \"bad\"\n[sweep]\nmetric = \"objective\"\nmax_trials = 4\n{extra}\n[sweep.params]\n{params}\n{}",
            quadratic_trial(2, "0")
        )
    };
    let cases = [
        (base("x = { uniform = [1.0, 1.0] }", ""), "sweep.params.x.uniform", "empty range"),
        (base("x = { loguniform = [0.0, 1.0] }", ""), "sweep.params.x.loguniform", "> 0"),
        (base("x = { uniform = [0.0, 1.0], when = \"model=cnn\" }", ""), "sweep.params.x.when", "`model`"),
        (base("x = { uniform = [0.0, 1.0] }", "").replace("max_trials = 4", "max_trials = 0"), "sweep.max_trials", "0"),
        (
            base("x = { uniform = [0.0, 1.0] }", "[sweep.pruner]\nkind = \"asha\""),
            "sweep.pruner.max_resource",
            "missing",
        ),
    ];
    for (i, (text, field, why)) in cases.iter().enumerate() {
        let f = write(&c, &format!("bad-{i}.toml"), text);
        let (code, _, err) = c.cli(&["sweep", "submit", &f]);
        assert_ne!(code, 0, "case {i} was accepted");
        assert!(err.contains(field) && err.contains(why), "case {i}: {err}");
    }
    let (_, out, _) = c.cli(&["-o", "json", "sweep", "list"]);
    assert_eq!(out.trim(), "[]", "a refused spec stored nothing");

    // ---- an objective no trial reports: the sweep fails, naming the field and what the trials do report.
    let spec = base("x = { uniform = [0.0, 1.0] }", "max_concurrent = 3")
        .replace("metric = \"objective\"", "metric = \"objectiv\"");
    let f = write(&c, "typo.toml", &spec);
    let (code, out, err) = c.cli(&["sweep", "submit", &f]);
    assert_eq!(code, 0, "{err}");
    let typo = out.trim().to_string();

    // ---- the tuned sweep: TPE after 4 random trials, ASHA with rungs at 1 and 3 of 9 steps.
    let spec = format!(
        r#"
name = "quad"
[sweep]
metric = "objective"
direction = "minimize"
searcher = "tpe"
startup_trials = 4
seed = 11
max_trials = 12
max_concurrent = 3
[sweep.pruner]
kind = "asha"
min_resource = 1
reduction_factor = 3
max_resource = 9
[sweep.params]
x = {{ uniform = [-2.0, 2.0] }}
{}"#,
        quadratic_trial(9, "0.15")
    );
    let f = write(&c, "quad.toml", &spec);
    let (code, out, err) = c.cli(&["sweep", "submit", &f]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();

    // While a trial runs, its status shows what it reported so far.
    wait_sweep(&c, &id, Duration::from_secs(60), |s| {
        s["trials"].as_array().unwrap().iter().any(|t| {
            t["state"] == "RUNNING" && !t["values"].as_array().unwrap().is_empty() && t["resource"].as_u64() > Some(0)
        })
    })
    .await;

    let t = wait_sweep(&c, &typo, Duration::from_secs(60), ended).await;
    assert_eq!(t["state"], "FAILED", "{t:#}");
    let reason = t["reason"].as_str().unwrap();
    assert!(
        reason.contains("sweep.metric") && reason.contains("`objectiv`") && reason.contains("objective"),
        "{reason}"
    );

    let s = wait_sweep(&c, &id, Duration::from_secs(240), ended).await;
    assert_eq!(s["state"], "SUCCEEDED", "{s:#}");
    let trials = s["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 12);
    let pruned: Vec<&serde_json::Value> = trials.iter().filter(|t| t["state"] == "PRUNED").collect();
    let completed: Vec<&serde_json::Value> = trials.iter().filter(|t| t["state"] == "COMPLETED").collect();
    assert!(!pruned.is_empty(), "ASHA pruned nothing: {s:#}");
    assert_eq!(pruned.len() + completed.len(), 12, "{s:#}");
    for t in &completed {
        assert_eq!(t["resource"], 9, "a completed trial ran its full budget: {t:#}");
    }
    // Every pruning was right: at the rung it was judged at, another trial had done better, and it stopped there.
    for p in &pruned {
        let rung = p["rung"].as_u64().unwrap();
        let resource = 3u64.pow(rung as u32);
        let mine = value_at(p, resource).unwrap_or_else(|| panic!("pruned without a value at {resource}: {p:#}"));
        let better = trials.iter().any(|o| o["index"] != p["index"] && value_at(o, resource).is_some_and(|v| v < mine));
        assert!(better, "trial {} was pruned at {resource} with the best value {mine}: {s:#}", p["index"]);
        assert!(p["resource"].as_u64().unwrap() < 9, "a pruned trial stopped early: {p:#}");
        let reason = p["reason"].as_str().unwrap();
        assert!(reason.contains("rung"), "{reason}");
        // Its task was stopped: the job was cancelled by the sweep.
        let job = c.jobs().await.get(GetJobRequest { job_id: p["job_id"].as_str().unwrap().into() }).await.unwrap();
        assert_eq!(state_of(job.get_ref()), JobState::Cancelled, "{:#?}", job.get_ref());
    }
    // The parameters each trial got are the ones its process used, within the range; TPE homed in.
    let best = &trials[s["best_trial"].as_u64().unwrap() as usize];
    let x = best["params"]["x"].as_f64().unwrap();
    assert!((-2.0..2.0).contains(&x));
    assert!((x - 0.3).abs() < 0.5, "best x {x} is far from 0.3: {s:#}");
    let want = (x - 0.3).powi(2) + 1.0 / 9.0;
    assert!((best["value"].as_f64().unwrap() - want).abs() < 1e-5, "{best:#}");

    let (code, out, err) = c.cli(&["sweep", "status", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PRUNED") && out.contains("pruned; ") && out.contains(" *"), "{out}");
    let png = c.path().join("quad.png");
    let (code, _, err) = c.cli(&["sweep", "status", &id, "--png", png.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let (code, out, err) = c.cli(&["sweep", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{:.4}", best["value"].as_f64().unwrap())), "the list shows the best value: {out}");
    let (code, out, err) = c.cli(&["sweep", "best", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("trial {}", best["index"])), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_and_worker_sigkilled_mid_sweep_lose_and_repeat_no_trial() {
    let mut c = start_cluster(3).await;
    c.start_worker("w1", "4", "");
    c.start_worker("w2", "4", "");
    let spec = format!(
        r#"
name = "failover"
[sweep]
metric = "objective"
searcher = "random"
seed = 5
max_trials = 10
max_concurrent = 3
[sweep.params]
x = {{ uniform = [-1.0, 1.0] }}
{}"#,
        quadratic_trial(6, "0.3")
    );
    let f = write(&c, "failover.toml", &spec);
    let (code, out, err) = c.cli(&["sweep", "submit", &f]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();

    // Mid-sweep: the leader dies with trials running.
    wait_sweep(&c, &id, Duration::from_secs(60), |s| s["trials"].as_array().unwrap().len() >= 3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    c.kill_node(leader);
    let new_leader = c.wait_leader(Duration::from_secs(30)).await;
    assert_ne!(new_leader, leader);

    // Then a worker dies with its trials (tasks run in their own sessions: they are killed with it).
    let s = wait_sweep(&c, &id, Duration::from_secs(60), |s| s["trials"].as_array().unwrap().len() >= 6).await;
    let running: Vec<String> = s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "RUNNING")
        .map(|t| t["job_id"].as_str().unwrap().to_string())
        .collect();
    let mut victim = "w1".to_string();
    for j in &running {
        let job = c.jobs().await.get(GetJobRequest { job_id: j.clone() }).await.unwrap().into_inner();
        if let Some(a) = job.tasks.first().and_then(|t| t.attempts.last()) {
            victim = a.worker_id.clone();
            break;
        }
    }
    c.kill_worker_and_tasks(&victim);

    let s = wait_sweep(&c, &id, Duration::from_secs(240), ended).await;
    assert_eq!(s["state"], "SUCCEEDED", "{s:#}");
    let trials = s["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 10, "exactly the configured number of trials: {s:#}");
    let indices: Vec<u64> = trials.iter().map(|t| t["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, (0..10).collect::<Vec<_>>());
    let mut jobs: Vec<&str> = trials.iter().map(|t| t["job_id"].as_str().unwrap()).collect();
    jobs.sort();
    jobs.dedup();
    assert_eq!(jobs.len(), 10, "one job per trial: {s:#}");
    for t in trials {
        assert_eq!(t["state"], "COMPLETED", "{t:#}");
        assert_eq!(t["resource"], 6, "{t:#}");
    }
    // No trial job exists outside the sweep's record (none submitted twice).
    let all = c.list_all().await;
    let of_sweep =
        all.iter().filter(|j| j.spec.as_ref().is_some_and(|s| s.labels.get("aidos.sweep") == Some(&id))).count();
    assert_eq!(of_sweep, 10, "jobs labelled with the sweep");
    // The worker's death cost a retry, not a trial.
    let retried = all.iter().filter(|j| j.attempt > 1).count();
    assert!(retried >= 1, "no trial job was retried after the worker died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_train_sweep_registers_its_best_model_with_the_sweep_in_its_lineage() {
    let c = mnist_cluster("train=8000,test=2000").await;
    let spec = r#"
name = "digits-sweep"
[sweep]
metric = "val_accuracy"
direction = "maximize"
searcher = "random"
seed = 3
max_trials = 4
max_concurrent = 2
register_as = "digits"
[sweep.pruner]
kind = "asha"
max_resource = 3
[sweep.params]
lr = { loguniform = [3e-4, 3e-3] }
width = { int = [16, 64], step = 16, when = "model=mlp" }
model = { choices = [{ name = "mlp", layers = [784, "${width}", 10] }] }
[trial]
kind = "train"
[trial.resources]
cpu = 1
memory = "1Gi"
[trial.train]
dataset = "mnist"
[trial.train.config]
epochs = 3
batch_size = 64
seed = 1
model = "${model}"
optimizer = { name = "adam", lr = "${lr}" }
"#;
    let f = write(&c, "digits.toml", spec);
    let (code, out, err) = c.cli(&["sweep", "submit", &f]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let s = wait_sweep(&c, &id, Duration::from_secs(300), ended).await;
    assert_eq!(s["state"], "SUCCEEDED", "{s:#}");
    let best = &s["trials"][s["best_trial"].as_u64().unwrap() as usize];
    assert!(best["value"].as_f64().unwrap() > 0.85, "{best:#}");
    assert_eq!(best["resource"], 3, "epochs are the resource: {best:#}");
    let (code, out, err) = c.cli(&["-o", "json", "model", "show", &format!("digits@best-{id}")]);
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(format!("digits:{}", m["version"]), s["best_model"].as_str().unwrap(), "{m:#}");
    assert_eq!(m["lineage"]["sweep"], id.as_str(), "{m:#}");
    assert_eq!(m["lineage"]["job_id"], best["job_id"], "{m:#}");
}

/// Promotion ASHA on MNIST: every trial pauses after its first epoch; a freed slot resumes the best of the paused
/// trials (once its rung has η of them) as a new job from the paused job's checkpoint; the rest are pruned at the
/// end. The best model went through both jobs and is registered with the second one in its lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_sweep_pauses_trials_and_resumes_the_best_from_their_checkpoints() {
    let c = mnist_cluster("train=2000,test=500").await;
    let spec = r#"
name = "promo"
[sweep]
metric = "val_accuracy"
direction = "maximize"
searcher = "random"
seed = 5
max_trials = 4
max_concurrent = 2
register_as = "promo"
[sweep.pruner]
kind = "asha"
max_resource = 3
mode = "promotion"
[sweep.params]
lr = { loguniform = [1e-4, 3e-3] }
[trial]
kind = "train"
[trial.resources]
cpu = 1
memory = "1Gi"
[trial.train]
dataset = "mnist"
[trial.train.config]
epochs = 3
batch_size = 100
seed = 1
model = { name = "mlp", layers = [784, 32, 10] }
optimizer = { name = "adam", lr = "${lr}" }
"#;
    let f = write(&c, "promo.toml", spec);
    let (code, out, err) = c.cli(&["sweep", "submit", &f]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let s = wait_sweep(&c, &id, Duration::from_secs(300), ended).await;
    assert_eq!(s["state"], "SUCCEEDED", "{s:#}");
    let trials = s["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4, "{s:#}");
    // Rung 0 is at 1 epoch of 3: four values there keep one. Whoever was in the top third of its rung when a slot
    // freed went on to 3 epochs (at least one); every other trial stopped at 1 epoch, pruned.
    let completed: Vec<&serde_json::Value> = trials.iter().filter(|t| t["state"] == "COMPLETED").collect();
    assert!(!completed.is_empty(), "{s:#}");
    for t in trials {
        let (state, resource, rung) = (t["state"].as_str().unwrap(), t["resource"].as_u64(), t["rung"].as_u64());
        match state {
            "COMPLETED" => assert_eq!((resource, rung), (Some(3), Some(1)), "{t:#}"),
            "PRUNED" => {
                assert_eq!(resource, Some(1), "{t:#}");
                assert!(t["reason"].as_str().unwrap().contains("top 1/3"), "{t:#}");
            }
            _ => panic!("a trial neither completed nor pruned: {t:#}"),
        }
        // Values at epochs 1..=resource, each once, across the trial's jobs.
        let at: Vec<u64> = t["values"].as_array().unwrap().iter().map(|v| v[0].as_u64().unwrap()).collect();
        assert_eq!(at, (1..=resource.unwrap()).collect::<Vec<_>>(), "{t:#}");
    }
    let epochs: u64 = trials.iter().map(|t| t["resource"].as_u64().unwrap()).sum();
    assert_eq!(epochs, 4 + 2 * completed.len() as u64, "epochs run: one per trial, two more per promotion");

    // The best trial's current job resumed from its first job's checkpoint (20 steps of 100 = one epoch).
    let best = &trials[s["best_trial"].as_u64().unwrap() as usize];
    assert_eq!(best["state"], "COMPLETED", "{best:#}");
    let job = best["job_id"].as_str().unwrap().to_string();
    let mut runs = aidos_api::run_service_client::RunServiceClient::new(c.any_channel().await);
    let run = runs.get(GetRunRequest { run_id: format!("{job}.1"), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(run.resumed_from_step, 20, "{run:#?}");
    let (code, out, err) = c.cli(&["-o", "json", "model", "show", &format!("promo@best-{id}")]);
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["lineage"]["job_id"], job.as_str(), "{m:#}");
    // Only completed trials register: the paused jobs left no model behind.
    let (code, out, err) = c.cli(&["-o", "json", "model", "show", "promo"]);
    assert_eq!(code, 0, "{err}");
    let latest: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(latest["version"].as_u64(), Some(completed.len() as u64), "{latest:#}");
    // The status says what was paused and pruned.
    let (code, out, err) = c.cli(&["sweep", "status", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{} pruned", 4 - completed.len())), "{out}");
    eprintln!("{out}");
}
