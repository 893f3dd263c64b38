//! `aidos bench submit`: submission throughput and latency of the control plane.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aidos_api::{JobKind, JobSpec, ProcessSpec, Resources, SubmitBatchRequest, SubmitRequest, job_spec};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output};
use super::client::{Client, status_error};
use super::render::{print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Submit many cheap jobs (`true`) and report durable submissions per second and latency per RPC
    Submit(SubmitBench),
    /// Time one model runtime in process (no server): per-inference latency at batch 1, one executor
    Runtime(RuntimeBench),
}

#[derive(Args, Debug)]
pub struct RuntimeBench {
    /// ONNX file
    #[arg(long, env = "AIDOS_BENCH_MODEL")]
    pub model: std::path::PathBuf,
    /// tract or ort
    #[arg(long, env = "AIDOS_BENCH_RUNTIME", default_value = "tract")]
    pub runtime: String,
    /// Timed inferences (after 100 warm-up ones)
    #[arg(long, env = "AIDOS_BENCH_ITERS", default_value_t = 2000)]
    pub iters: usize,
}

/// Per-inference latency of a runtime at batch 1 on a fixed input in [0, 1).
pub fn runtime_bench(a: &RuntimeBench) -> anyhow::Result<()> {
    let kind: aidos_runtime::RuntimeKind = a.runtime.parse()?;
    let bytes = std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let rt = aidos_runtime::load_onnx(kind, &a.model.display().to_string(), &bytes)?;
    let n = rt.metadata().inputs.first().map(|t| t.row_len()).unwrap_or(0);
    let x = aidos_runtime::Tensor { shape: vec![1, n], data: (0..n).map(|i| (i % 97) as f32 / 97.0).collect() };
    let mut inst = rt.instance()?;
    for _ in 0..100 {
        inst.run(std::slice::from_ref(&x))?;
    }
    let mut lat = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = std::time::Instant::now();
        inst.run(std::slice::from_ref(&x))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    println!(
        "{} {}: batch 1, {} inferences: mean {:.1} us, p50 {:.1} us, p99 {:.1} us",
        a.runtime,
        a.model.display(),
        a.iters,
        mean,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct SubmitBench {
    /// Total number of jobs to submit
    #[arg(long, env = "AIDOS_BENCH_JOBS", default_value_t = 1000)]
    pub jobs: u64,
    /// Concurrent submitters, each with its own connection
    #[arg(long, env = "AIDOS_BENCH_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Submissions per RPC; above 1 uses SubmitBatch
    #[arg(long, env = "AIDOS_BENCH_BATCH", default_value_t = 1)]
    pub batch: u64,
    /// Open loop: start submissions at this total rate per second, and measure latency from each RPC's scheduled
    /// start (default: closed loop, as fast as the submitters go)
    #[arg(long, env = "AIDOS_BENCH_RATE")]
    pub rate: Option<f64>,
}

#[derive(Default)]
struct TaskResult {
    latencies: Vec<Duration>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

pub async fn run(g: &Global, cmd: BenchCmd) -> anyhow::Result<()> {
    let a = match cmd {
        BenchCmd::Submit(a) => a,
        BenchCmd::Runtime(r) => return tokio::task::spawn_blocking(move || runtime_bench(&r)).await?,
    };
    anyhow::ensure!(a.jobs > 0, "--jobs must be > 0");
    anyhow::ensure!(a.concurrency > 0, "--concurrency must be > 0");
    anyhow::ensure!(a.batch > 0, "--batch must be > 0");
    if let Some(r) = a.rate {
        anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be > 0");
    }
    let spec = JobSpec {
        name: "bench".into(),
        kind: JobKind::Process as i32,
        resources: Some(Resources { cpu_millis: 1, memory_bytes: 1, gpus: 0 }),
        replicas: 1,
        labels: [("aidos-bench".to_string(), "submit".to_string())].into(),
        payload: Some(job_spec::Payload::Process(ProcessSpec {
            executable: "true".into(),
            args: vec![],
            env: Default::default(),
        })),
        ..Default::default()
    };
    aidos_api::spec::validate(&spec)?;
    let run_id = super::job::new_request_id();

    // Connect every submitter before the clock starts.
    let mut clients = Vec::with_capacity(a.concurrency);
    for _ in 0..a.concurrency {
        let c = Client::new(&g.scheduler)?;
        c.call(|_ch| async { Ok(()) }).await.map_err(|e| status_error(e, ""))?;
        clients.push(c);
    }

    let rpcs = a.jobs.div_ceil(a.batch);
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for client in clients {
        let (next, spec, run_id) = (next.clone(), spec.clone(), run_id.clone());
        let (jobs, batch, rate) = (a.jobs, a.batch, a.rate);
        handles.push(tokio::spawn(async move {
            let mut res = TaskResult::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= rpcs {
                    break;
                }
                let first = k * batch;
                let n = batch.min(jobs - first);
                let start = match rate {
                    Some(r) => {
                        let at = t0 + Duration::from_secs_f64(first as f64 / r);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let reqs: Vec<SubmitRequest> = (first..first + n)
                    .map(|i| SubmitRequest { spec: Some(spec.clone()), request_id: format!("bench-{run_id}-{i}") })
                    .collect();
                let out = if batch == 1 {
                    client
                        .job(|mut c| {
                            let req = reqs[0].clone();
                            async move { c.submit(req).await.map(|_| 1u64) }
                        })
                        .await
                } else {
                    client
                        .job(|mut c| {
                            let req = SubmitBatchRequest { requests: reqs.clone() };
                            async move { c.submit_batch(req).await.map(|r| r.into_inner().responses.len() as u64) }
                        })
                        .await
                };
                match out {
                    Ok(done) => {
                        res.latencies.push(start.elapsed());
                        res.ok += done;
                        res.failed += n.saturating_sub(done);
                    }
                    Err(st) => {
                        res.failed += n;
                        res.first_error.get_or_insert_with(|| status_error(st, "").to_string());
                    }
                }
            }
            res
        }));
    }
    let mut all = TaskResult::default();
    for h in handles {
        let r = h.await?;
        all.latencies.extend(r.latencies);
        all.ok += r.ok;
        all.failed += r.failed;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    let elapsed = t0.elapsed();
    report(g, &a, rpcs, elapsed, &mut all);
    if all.failed > 0 {
        let why = all.first_error.unwrap_or_else(|| "fewer responses than requests".into());
        anyhow::bail!("{} of {} submissions failed; first error: {why}", all.failed, a.jobs);
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn report(g: &Global, a: &SubmitBench, rpcs: u64, elapsed: Duration, r: &mut TaskResult) {
    r.latencies.sort_unstable();
    let l = &r.latencies;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rate = r.ok as f64 / elapsed.as_secs_f64().max(1e-9);
    let (p50, p90, p99, max) = (percentile(l, 0.5), percentile(l, 0.9), percentile(l, 0.99), percentile(l, 1.0));
    if g.output == Output::Json {
        print_json(&json!({
            "jobs": a.jobs,
            "concurrency": a.concurrency,
            "batch": a.batch,
            "rate": a.rate,
            "rpcs": rpcs,
            "ok": r.ok,
            "failed": r.failed,
            "elapsed_secs": elapsed.as_secs_f64(),
            "submissions_per_sec": rate,
            "latency_ms": { "p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "max": ms(max) },
        }));
        return;
    }
    let mode = match a.rate {
        Some(r) => format!("open loop at {r}/s"),
        None => "closed loop".into(),
    };
    let rows = vec![
        vec!["jobs".into(), format!("{} ok, {} failed", r.ok, r.failed)],
        vec!["rpcs".into(), format!("{rpcs} (batch {}, concurrency {}, {mode})", a.batch, a.concurrency)],
        vec!["elapsed".into(), format!("{:.3}s", elapsed.as_secs_f64())],
        vec!["submissions/s".into(), format!("{rate:.1}")],
        vec!["latency p50".into(), format!("{:.2}ms", ms(p50))],
        vec!["latency p90".into(), format!("{:.2}ms", ms(p90))],
        vec!["latency p99".into(), format!("{:.2}ms", ms(p99))],
        vec!["latency max".into(), format!("{:.2}ms", ms(max))],
    ];
    print_table(&["METRIC", "VALUE"], &rows);
}
