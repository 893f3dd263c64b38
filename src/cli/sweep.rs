//! `aidos sweep ...`: hyperparameter sweeps (submit a spec, follow it, the trial table, the best trial, cancel), and
//! `aidos report`, which a trial written in any language calls to report its metrics.

use std::path::PathBuf;
use std::time::Duration;

use aidos_api::v1::{
    CancelSweepRequest, GetSweepRequest, ListSweepsRequest, ParamKind, SubmitSweepRequest, Sweep, SweepState, Trial,
    TrialState,
};
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output};
use super::client::{Client, status_error};
use super::plot::{Series, TrialLine, sweep_png};
use super::process::Exit;
use super::render::{age, print_json, print_table, sweep_state, trial_state, truncate};

#[derive(Subcommand, Debug)]
pub enum SweepCmd {
    /// Submit a sweep spec (TOML: [sweep] with the objective, budget, searcher, pruner and [sweep.params]; [trial]
    /// with the job each trial runs); prints its id
    Submit {
        /// The sweep spec file
        spec: PathBuf,
        /// Follow the sweep until it ends, then print its status
        #[arg(long, env = "AIDOS_SWEEP_FOLLOW")]
        follow: bool,
        /// Idempotency key: a retried submission with the same id answers the first sweep
        #[arg(long, env = "AIDOS_REQUEST_ID")]
        request_id: Option<String>,
    },
    /// Sweeps, oldest first
    List,
    /// The trial table (parameters, latest and best value, rung, state; the best marked `*`) and the compute the
    /// pruner saved
    Status(StatusArgs),
    /// The best trial: its parameters, value, job and model
    Best {
        /// Sweep id (`sweep-1`)
        sweep: String,
    },
    /// Stop a sweep: no new trials; running trials are cancelled
    Cancel {
        /// Sweep id
        sweep: String,
    },
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Sweep id (`sweep-1`)
    pub sweep: String,
    /// Also write a parallel-coordinates plot of the trials and the best-so-far curve to this PNG file
    #[arg(long, env = "AIDOS_SWEEP_PNG")]
    pub png: Option<PathBuf>,
}

/// `aidos report`: from inside a task (a sweep trial, or any job), report metrics to its run now.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The step (for a sweep trial: the resource used so far, e.g. the epoch or iteration)
    #[arg(long, env = "AIDOS_REPORT_STEP")]
    pub step: u64,
    /// Metrics as NAME=VALUE, e.g. loss=0.25
    #[arg(required = true)]
    pub metrics: Vec<String>,
}

pub async fn get(client: &Client, id: &str) -> anyhow::Result<Sweep> {
    let sweep_id = id.to_string();
    client
        .sweeps(|mut c| {
            let sweep_id = sweep_id.clone();
            async move { c.get(GetSweepRequest { sweep_id }).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, &format!("sweep {id}")))
}

pub async fn run(g: &Global, cmd: SweepCmd) -> anyhow::Result<()> {
    let client = Client::new(&g.scheduler)?;
    match cmd {
        SweepCmd::Submit { spec, follow, request_id } => {
            let text =
                std::fs::read_to_string(&spec).map_err(|e| anyhow::anyhow!("reading {}: {e}", spec.display()))?;
            let spec = aidos_api::sweep::parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
            check_train_template(&spec)?;
            let request_id = request_id.unwrap_or_else(super::job::new_request_id);
            let req = SubmitSweepRequest { spec: Some(spec), request_id };
            let s = client
                .sweeps(|mut c| {
                    let req = req.clone();
                    async move { c.submit(req).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            if !follow {
                match g.output {
                    Output::Json => print_json(&json!({ "sweep_id": s.id })),
                    Output::Table => println!("{}", s.id),
                }
                return Ok(());
            }
            eprintln!("{}", s.id);
            let s = follow_sweep(&client, &s.id).await?;
            show(g, &s);
            ended(&s)
        }
        SweepCmd::List => {
            let r = client
                .sweeps(|mut c| async move { c.list(ListSweepsRequest {}).await.map(|r| r.into_inner()) })
                .await
                .map_err(|e| status_error(e, ""))?;
            if g.output == Output::Json {
                print_json(&json!(r.sweeps.iter().map(sweep_json).collect::<Vec<_>>()));
                return Ok(());
            }
            let rows = r
                .sweeps
                .iter()
                .map(|s| {
                    let spec = s.spec.clone().unwrap_or_default();
                    vec![
                        s.id.clone(),
                        spec.name.clone(),
                        sweep_state(s.state).into(),
                        format!("{} {}", if spec.maximize { "max" } else { "min" }, spec.metric),
                        s.trials.first().filter(|t| t.has_value).map(|t| format!("{:.4}", t.value)).unwrap_or_default(),
                        age(s.created_at_ms),
                    ]
                })
                .collect::<Vec<_>>();
            print_table(&["ID", "NAME", "STATE", "OBJECTIVE", "BEST", "AGE"], &rows);
            Ok(())
        }
        SweepCmd::Status(a) => {
            let s = get(&client, &a.sweep).await?;
            show(g, &s);
            if let Some(path) = a.png {
                std::fs::write(&path, png(&s)?).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        SweepCmd::Best { sweep } => {
            let s = get(&client, &sweep).await?;
            let Some(t) = s.best_trial.and_then(|b| s.trials.get(b as usize)).or_else(|| best_so_far(&s)) else {
                return Err(Exit { code: 1, msg: format!("sweep {sweep} has no completed trial yet") }.into());
            };
            if g.output == Output::Json {
                print_json(
                    &json!({ "sweep": s.id, "trial": trial_json(t), "model": s.best_model, "final": s.best_trial.is_some() }),
                );
                return Ok(());
            }
            println!("trial {}  {} = {:.6}  job {}", t.index, metric(&s), t.value, t.job_id);
            println!("params {}", t.params_json);
            if !s.best_model.is_empty() {
                let name = s.best_model.split(':').next().unwrap_or_default();
                println!("model {}  (alias {name}@best-{})", s.best_model, s.id);
            }
            Ok(())
        }
        SweepCmd::Cancel { sweep } => {
            let s = client
                .sweeps(|mut c| {
                    let sweep_id = sweep.clone();
                    async move { c.cancel(CancelSweepRequest { sweep_id }).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, &format!("sweep {sweep}")))?;
            println!("sweep {} {}", s.id, sweep_state(s.state).to_lowercase());
            Ok(())
        }
    }
}

/// `aidos report`: the SDK's report path, for trials that are not Rust programs.
pub fn report(a: ReportArgs) -> anyhow::Result<()> {
    let mut metrics = Vec::new();
    for m in &a.metrics {
        let (k, v) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("`{m}`: expected NAME=VALUE, e.g. loss=0.25"))?;
        let v: f64 = v.trim().parse().map_err(|_| anyhow::anyhow!("`{m}`: `{v}` is not a number"))?;
        metrics.push((k.trim().to_string(), v));
    }
    let ctx = aidos_sdk::Context::from_env()
        .map_err(|e| anyhow::anyhow!("aidos report runs inside an aidos task (its AIDOS_* environment): {e}"))?;
    let refs: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    ctx.report(a.step, &refs)?;
    Ok(())
}

/// A `train` template: every categorical choice's trial config must be a valid trainer config, checked here so a
/// typo fails the submission rather than every trial.
fn check_train_template(spec: &aidos_api::v1::SweepSpec) -> anyhow::Result<()> {
    let Some(aidos_api::v1::job_spec::Payload::Train(_)) = spec.trial.as_ref().and_then(|t| t.payload.as_ref()) else {
        return Ok(());
    };
    // One point per choice of each categorical parameter (the others at their lower bounds).
    let cats: Vec<&aidos_api::v1::ParamSpec> =
        spec.params.iter().filter(|p| p.kind == ParamKind::Categorical as i32).collect();
    let n = cats.iter().map(|p| p.choices.len()).max().unwrap_or(1);
    for i in 0..n {
        let mut params = std::collections::BTreeMap::new();
        let mut labels = std::collections::BTreeMap::new();
        for p in aidos_api::sweep::order(&spec.params).map_err(|e| anyhow::anyhow!("sweep.params.{e}: cycle"))? {
            if !aidos_api::sweep::is_active(p, &labels) {
                continue;
            }
            let v: serde_json::Value = match ParamKind::try_from(p.kind) {
                Ok(ParamKind::Categorical) => {
                    let c = i.min(p.choices.len() - 1);
                    labels.insert(p.name.clone(), p.labels[c].clone());
                    serde_json::from_str(&p.choices[c])?
                }
                Ok(ParamKind::Int) => json!(p.low as i64),
                _ => json!(p.low),
            };
            params.insert(p.name.clone(), v);
        }
        let job = aidos_api::sweep::trial_spec(spec, "check", 0, &params).map_err(|e| anyhow::anyhow!("trial: {e}"))?;
        if let Some(aidos_api::v1::job_spec::Payload::Train(t)) = &job.payload {
            aidos_train::TrainConfig::from_json(&t.config_json).map_err(|e| {
                anyhow::anyhow!("trial.train.config with {}: {e}", serde_json::to_string(&params).unwrap_or_default())
            })?;
        }
    }
    Ok(())
}

async fn follow_sweep(client: &Client, id: &str) -> anyhow::Result<Sweep> {
    let mut last = (0usize, 0usize);
    loop {
        let s = get(client, id).await?;
        let open =
            |t: &aidos_api::v1::Trial| t.state == TrialState::Running as i32 || t.state == TrialState::Paused as i32;
        let done = s.trials.iter().filter(|t| !open(t)).count();
        if (s.trials.len(), done) != last {
            last = (s.trials.len(), done);
            let best =
                best_so_far(&s).map(|t| format!(", best {:.4} (trial {})", t.value, t.index)).unwrap_or_default();
            eprintln!("{id}: {} trials started, {done} ended{best}", s.trials.len());
        }
        if s.state != SweepState::Running as i32 && !s.trials.iter().any(open) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ended(s: &Sweep) -> anyhow::Result<()> {
    if s.state == SweepState::Succeeded as i32 {
        Ok(())
    } else {
        Err(Exit { code: 1, msg: format!("sweep {} {}: {}", s.id, sweep_state(s.state).to_lowercase(), s.reason) }
            .into())
    }
}

fn metric(s: &Sweep) -> String {
    s.spec.as_ref().map(|x| x.metric.clone()).unwrap_or_default()
}

/// The best completed trial so far (the sweep's own choice once it ended): the rule the scheduler chooses by.
fn best_so_far(s: &Sweep) -> Option<&Trial> {
    let maximize = s.spec.as_ref().is_some_and(|x| x.maximize);
    aidos_scheduler::sweep::plan::best_trial(&s.trials, maximize).and_then(|i| s.trials.get(i as usize))
}

/// Resource units run, and what every trial running to its full budget would have run.
pub fn compute(s: &Sweep) -> (u64, u64) {
    let spec = s.spec.clone().unwrap_or_default();
    let full = spec.pruner.as_ref().map(|p| p.max_resource).filter(|m| *m > 0);
    let used: u64 = s.trials.iter().map(|t| t.resource).sum();
    let full_budget = match full {
        Some(m) => m * s.trials.len() as u64,
        None => s.trials.iter().map(|t| t.resource).max().unwrap_or(0) * s.trials.len() as u64,
    };
    (used, full_budget)
}

fn trial_json(t: &Trial) -> serde_json::Value {
    json!({
        "index": t.index, "params": serde_json::from_str::<serde_json::Value>(&t.params_json).unwrap_or_default(),
        "job_id": t.job_id, "state": trial_state(t.state), "value": t.has_value.then_some(t.value),
        "best": t.has_value.then_some(t.best), "resource": t.resource, "rung": t.rung, "bracket": t.bracket,
        "reason": t.reason, "started_at_ms": t.started_at_ms, "finished_at_ms": t.finished_at_ms,
        "values": t.values.iter().map(|v| json!([v.resource, v.value])).collect::<Vec<_>>(),
    })
}

fn sweep_json(s: &Sweep) -> serde_json::Value {
    let (used, full) = compute(s);
    json!({
        "id": s.id, "name": s.spec.as_ref().map(|x| x.name.clone()), "state": sweep_state(s.state), "reason": s.reason,
        "metric": metric(s), "maximize": s.spec.as_ref().is_some_and(|x| x.maximize),
        "best_trial": s.best_trial, "best_model": s.best_model, "created_at_ms": s.created_at_ms,
        "finished_at_ms": s.finished_at_ms, "resource_used": used, "resource_full": full,
        "trials": s.trials.iter().map(trial_json).collect::<Vec<_>>(),
    })
}

fn show(g: &Global, s: &Sweep) {
    if g.output == Output::Json {
        print_json(&sweep_json(s));
        return;
    }
    let best = s.best_trial.or_else(|| best_so_far(s).map(|t| t.index));
    let rows: Vec<Vec<String>> = s
        .trials
        .iter()
        .map(|t| {
            let latest = t.values.last().map(|v| v.value).or(t.has_value.then_some(t.value));
            vec![
                format!("{}{}", t.index, if Some(t.index) == best { " *" } else { "" }),
                trial_state(t.state).into(),
                latest.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
                if t.has_value { format!("{:.4}", t.best) } else { "-".into() },
                t.resource.to_string(),
                t.rung.to_string(),
                t.job_id.clone(),
                truncate(&t.params_json, 90),
            ]
        })
        .collect();
    let spec = s.spec.clone().unwrap_or_default();
    println!(
        "sweep {} ({})  {}  {} {}  {}",
        s.id,
        spec.name,
        sweep_state(s.state),
        if spec.maximize { "maximize" } else { "minimize" },
        spec.metric,
        s.reason
    );
    print_table(
        &["TRIAL", "STATE", "LATEST", "BEST", spec.resource_unit.to_uppercase().as_str(), "RUNG", "JOB", "PARAMS"],
        &rows,
    );
    let pruned = s.trials.iter().filter(|t| t.state == TrialState::Pruned as i32).count();
    let paused = s.trials.iter().filter(|t| t.state == TrialState::Paused as i32).count();
    let paused = if paused > 0 { format!(", {paused} paused") } else { String::new() };
    let (used, full) = compute(s);
    let pct = if full > 0 { 100.0 * used as f64 / full as f64 } else { 0.0 };
    println!(
        "{} trials, {pruned} pruned{paused}; {used} of {full} {}s run ({pct:.0}% of the full budget: the pruner saved {:.0}%)",
        s.trials.len(),
        spec.resource_unit,
        100.0 - pct
    );
    if let Some(t) = best.and_then(|b| s.trials.get(b as usize)) {
        println!(
            "best: trial {} {} = {:.4}{}",
            t.index,
            spec.metric,
            t.value,
            if s.best_model.is_empty() { String::new() } else { format!(", model {}", s.best_model) }
        );
    }
}

/// The parallel-coordinates plot and the best-so-far curve.
fn png(s: &Sweep) -> anyhow::Result<Vec<u8>> {
    let spec = s.spec.clone().unwrap_or_default();
    let mut axes = Vec::new();
    for p in &spec.params {
        let (lo, hi) = match ParamKind::try_from(p.kind) {
            Ok(ParamKind::Categorical) => {
                (p.labels.first().cloned().unwrap_or_default(), p.labels.last().cloned().unwrap_or_default())
            }
            _ => (format!("{}", p.low), format!("{}", p.high)),
        };
        axes.push((p.name.clone(), lo, hi));
    }
    let with_value: Vec<&Trial> = s.trials.iter().filter(|t| t.has_value).collect();
    let (vmin, vmax) =
        with_value.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| (a.min(t.value), b.max(t.value)));
    axes.push((spec.metric.clone(), format!("{vmin:.3}"), format!("{vmax:.3}")));
    let norm = |v: f64| if vmax > vmin { (v - vmin) / (vmax - vmin) } else { 0.5 };
    let best = s.best_trial.or_else(|| best_so_far(s).map(|t| t.index));
    let lines = with_value
        .iter()
        .map(|t| {
            let params: serde_json::Value = serde_json::from_str(&t.params_json).unwrap_or_default();
            let mut at: Vec<f64> = spec
                .params
                .iter()
                .map(|p| {
                    let Some(v) = params.get(&p.name) else { return f64::NAN };
                    match ParamKind::try_from(p.kind) {
                        Ok(ParamKind::Categorical) => {
                            let i = p
                                .choices
                                .iter()
                                .position(|c| serde_json::from_str::<serde_json::Value>(c).ok().as_ref() == Some(v))
                                .unwrap_or(0);
                            if p.choices.len() > 1 { i as f64 / (p.choices.len() - 1) as f64 } else { 0.5 }
                        }
                        Ok(ParamKind::LogUniform) => {
                            (v.as_f64().unwrap_or(p.low).ln() - p.low.ln()) / (p.high.ln() - p.low.ln())
                        }
                        _ => (v.as_f64().unwrap_or(p.low) - p.low) / (p.high - p.low),
                    }
                })
                .collect();
            at.push(norm(t.value));
            let q = if spec.maximize { norm(t.value) } else { 1.0 - norm(t.value) };
            TrialLine { at, best: Some(t.index) == best, quality: q }
        })
        .collect::<Vec<_>>();
    let mut curve = Vec::new();
    let mut so_far: Option<f64> = None;
    for t in s.trials.iter().filter(|t| t.state == TrialState::Completed as i32 && t.has_value) {
        so_far = Some(match so_far {
            None => t.value,
            Some(b) if spec.maximize => b.max(t.value),
            Some(b) => b.min(t.value),
        });
        curve.push((t.index as f64, so_far.unwrap_or(t.value)));
    }
    sweep_png(&s.id, &axes, &lines, &Series { name: format!("best {}", spec.metric), points: curve })
}
