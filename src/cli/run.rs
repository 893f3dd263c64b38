//! `aidos run ...`: every attempt of a training job is a run (params, metric series, checkpoints).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use aidos_api::{GetRunRequest, ListRunsRequest, MetricPoint, Run};
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output};
use super::client::{Client, status_error};
use super::plot::{png_chart, series_by_name, text_chart};
use super::render::{age, print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// Runs, newest first
    List {
        /// Only the runs of this job
        #[arg(long, env = "AIDOS_RUN_JOB")]
        job: Option<String>,
    },
    /// One run: params, last value of each metric, checkpoints, the model it registered
    Show {
        /// Run id (`job-3.1`) or job id (its latest attempt)
        run: String,
    },
    /// Metric curves in the terminal, or as a PNG with --png
    Metrics(MetricsArgs),
    /// Several runs side by side: params and final metrics
    Compare {
        /// Run ids (or job ids)
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Run id (`job-3.1`) or job id
    pub run: String,
    /// Only these metrics (repeatable); default: every metric
    #[arg(long, env = "AIDOS_RUN_METRIC")]
    pub metric: Vec<String>,
    /// Write the chart to this PNG file instead of the terminal
    #[arg(long, env = "AIDOS_RUN_PNG")]
    pub png: Option<PathBuf>,
}

pub async fn get_run(client: &mut Client, id: &str) -> anyhow::Result<Run> {
    client
        .runs(|mut c| {
            let run_id = id.to_string();
            async move { c.get(GetRunRequest { run_id, ..Default::default() }).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, &format!("run {id}")))
}

/// The last value of each metric.
fn last_values(r: &Run) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for p in &r.metrics {
        m.insert(p.name.clone(), p.value);
    }
    m
}

fn points_json(ps: &[MetricPoint]) -> serde_json::Value {
    json!(
        ps.iter()
            .map(|p| json!({"step": p.step, "epoch": p.epoch, "name": p.name, "value": p.value, "time_ms": p.time_ms}))
            .collect::<Vec<_>>()
    )
}

fn run_json(r: &Run) -> serde_json::Value {
    json!({
        "id": r.id, "job_id": r.job_id, "attempt": r.attempt, "params": r.params, "dataset": r.dataset,
        "resumed_from_step": r.resumed_from_step, "model": r.model, "created_at_ms": r.created_at_ms,
        "last": last_values(r),
        "checkpoints": r.checkpoints.iter().map(|c| json!({"step": c.step, "epoch": c.epoch, "blob": c.blob})).collect::<Vec<_>>(),
        "metrics": points_json(&r.metrics),
    })
}

fn fmt(v: Option<&f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

pub async fn run(g: &Global, cmd: RunCmd) -> anyhow::Result<()> {
    let mut client = Client::new(&g.scheduler)?;
    match cmd {
        RunCmd::List { job } => {
            let job_id = job.unwrap_or_default();
            let mut runs = client
                .runs(|mut c| {
                    let job_id = job_id.clone();
                    async move {
                        c.list(ListRunsRequest { job_id, ..Default::default() }).await.map(|r| r.into_inner().runs)
                    }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            runs.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
            if g.output == Output::Json {
                print_json(&json!({"runs": runs.iter().map(|r| {
                    let mut v = run_json(r);
                    v.as_object_mut().expect("object").remove("metrics");
                    v
                }).collect::<Vec<_>>()}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    let last = last_values(r);
                    let step = r.metrics.iter().map(|p| p.step).max().unwrap_or(0);
                    vec![
                        r.id.clone(),
                        r.dataset.clone(),
                        step.to_string(),
                        fmt(last.get("train_loss")),
                        fmt(last.get("val_accuracy")),
                        if r.resumed_from_step > 0 { format!("step {}", r.resumed_from_step) } else { "-".into() },
                        if r.model.is_empty() { "-".into() } else { r.model.clone() },
                        age(r.created_at_ms),
                    ]
                })
                .collect();
            print_table(&["RUN", "DATASET", "STEP", "TRAIN_LOSS", "VAL_ACC", "RESUMED", "MODEL", "AGE"], &rows);
        }
        RunCmd::Show { run } => {
            let r = get_run(&mut client, &run).await?;
            if g.output == Output::Json {
                print_json(&run_json(&r));
                return Ok(());
            }
            println!("run:        {}", r.id);
            println!("job:        {} (attempt {})", r.job_id, r.attempt);
            println!("dataset:    {}", if r.dataset.is_empty() { "-" } else { &r.dataset });
            if r.resumed_from_step > 0 {
                println!("resumed:    from the checkpoint at step {}", r.resumed_from_step);
            }
            println!("model:      {}", if r.model.is_empty() { "-" } else { &r.model });
            println!("created:    {} ago", age(r.created_at_ms));
            println!("\nPARAMS");
            let rows: Vec<Vec<String>> = r.params.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
            print_table(&["NAME", "VALUE"], &rows);
            println!("\nMETRICS (last value)");
            let mut last: BTreeMap<&str, &MetricPoint> = BTreeMap::new();
            for p in &r.metrics {
                last.insert(&p.name, p);
            }
            let rows: Vec<Vec<String>> = last
                .values()
                .map(|p| vec![p.name.clone(), format!("{:.6}", p.value), p.step.to_string(), p.epoch.to_string()])
                .collect();
            print_table(&["NAME", "VALUE", "STEP", "EPOCH"], &rows);
            println!("\nCHECKPOINTS");
            let rows: Vec<Vec<String>> = r
                .checkpoints
                .iter()
                .map(|c| {
                    vec![c.step.to_string(), c.epoch.to_string(), c.blob.chars().take(16).collect(), age(c.time_ms)]
                })
                .collect();
            print_table(&["STEP", "EPOCH", "BLOB", "AGE"], &rows);
        }
        RunCmd::Metrics(a) => {
            let r = get_run(&mut client, &a.run).await?;
            // Both formats show the same points: those of the metrics asked for (all without --metric).
            let points: Vec<MetricPoint> =
                r.metrics.iter().filter(|p| a.metric.is_empty() || a.metric.contains(&p.name)).cloned().collect();
            let none = || {
                anyhow::anyhow!(
                    "run {} has no metric points{}",
                    r.id,
                    if a.metric.is_empty() { String::new() } else { format!(" named {}", a.metric.join(", ")) }
                )
            };
            if g.output == Output::Json {
                // A run without any points yet is an empty list (scripts poll runs that are starting); a filter
                // that matches nothing is the same error as the table's.
                if points.is_empty() && !a.metric.is_empty() {
                    return Err(none());
                }
                print_json(&json!({"run": r.id, "metrics": points_json(&points)}));
                return Ok(());
            }
            let series = series_by_name(&points, &[]);
            if series.is_empty() {
                return Err(none());
            }
            if let Some(path) = &a.png {
                let bytes = png_chart(&format!("run {}", r.id), "step", &series)?;
                std::fs::write(path, bytes).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                println!("wrote {}", path.display());
            } else {
                // Loss-like and accuracy-like metrics have different scales: one chart each.
                for s in series {
                    print!("{}", text_chart(&format!("{} ({})", s.name, r.id), &[s], 60, 12));
                    println!();
                }
            }
        }
        RunCmd::Compare { runs } => {
            let mut got = Vec::new();
            for id in &runs {
                got.push(get_run(&mut client, id).await?);
            }
            if g.output == Output::Json {
                print_json(
                    &json!({"runs": got.iter().map(|r| json!({"id": r.id, "params": r.params, "last": last_values(r), "model": r.model})).collect::<Vec<_>>()}),
                );
                return Ok(());
            }
            let lasts: Vec<BTreeMap<String, f64>> = got.iter().map(last_values).collect();
            let params: BTreeSet<&String> = got.iter().flat_map(|r| r.params.keys()).collect();
            let metrics: BTreeSet<&String> = lasts.iter().flat_map(|l| l.keys()).collect();
            let mut headers = vec!["".to_string()];
            headers.extend(got.iter().map(|r| r.id.clone()));
            let mut rows: Vec<Vec<String>> = Vec::new();
            rows.push(std::iter::once("dataset".to_string()).chain(got.iter().map(|r| r.dataset.clone())).collect());
            rows.push(std::iter::once("model".to_string()).chain(got.iter().map(|r| r.model.clone())).collect());
            for p in params {
                rows.push(
                    std::iter::once(p.clone())
                        .chain(got.iter().map(|r| r.params.get(p).cloned().unwrap_or_else(|| "-".into())))
                        .collect(),
                );
            }
            for m in metrics {
                rows.push(std::iter::once(m.clone()).chain(lasts.iter().map(|l| fmt(l.get(m)))).collect());
            }
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            print_table(&h, &rows);
        }
    }
    Ok(())
}
