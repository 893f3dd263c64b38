//! `aidos edge ...`: the fleet (list, deploy, telemetry) and the agent itself (`aidos edge agent`, the same as the
//! `aidos-edge` binary). Wiring only: the control plane is in the scheduler, the agent in `aidos-edge`.

use std::collections::BTreeMap;

use aidos_api::edge_service_client::EdgeServiceClient;
use aidos_api::v1::{EdgeDeployRequest, ListDevicesRequest};
use aidos_runtime::{RuntimeKind, Tensor};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output, blob_store};
use super::client::{Client, status_error};
use super::render::{age, print_json, print_table, truncate};

#[derive(Subcommand, Debug)]
pub enum EdgeCmd {
    /// The fleet: each device's labels, what it runs, its health and when it was last seen
    List,
    /// Deploy a registry model to the devices whose labels match: exported to ONNX, signed, health-check sample
    /// recorded
    Deploy(DeployArgs),
    /// A device's uploaded telemetry (inference counts, errors, latency) per interval
    Telemetry {
        /// Device name
        device: String,
        /// Show at most this many of the newest intervals
        #[arg(long, env = "AIDOS_EDGE_TELEMETRY_LAST", default_value_t = 20)]
        last: usize,
    },
    /// Run the edge agent on this machine (the same as the `aidos-edge` binary)
    Agent(Box<aidos_edge::args::AgentArgs>),
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Registry model: NAME@ALIAS, NAME:VERSION or NAME
    pub model: String,
    /// Devices to run it: labels as k=v, comma-separated (all must match; empty: every device)
    #[arg(long, env = "AIDOS_EDGE_SELECTOR", value_delimiter = ',')]
    pub selector: Vec<String>,
    /// Deployment name (default: the model's name)
    #[arg(long, env = "AIDOS_EDGE_DEPLOYMENT")]
    pub name: Option<String>,
    /// When the version has no ONNX artifact yet, export it in an `export` job on a worker (default: in this
    /// process)
    #[arg(long, env = "AIDOS_EDGE_EXPORT_ON_CLUSTER")]
    pub export_on_cluster: bool,
}

pub async fn run(g: &Global, cmd: EdgeCmd) -> anyhow::Result<()> {
    match cmd {
        EdgeCmd::List => list(g).await,
        EdgeCmd::Deploy(a) => deploy(g, a).await,
        EdgeCmd::Telemetry { device, last } => telemetry(g, &device, last).await,
        EdgeCmd::Agent(a) => {
            let cfg = a.config().map_err(anyhow::Error::msg)?;
            aidos_edge::run(cfg, super::process::shutdown_signal()).await.context("edge agent")
        }
    }
}

async fn edge<T, F, Fut>(c: &mut Client, f: F) -> anyhow::Result<T>
where
    F: Fn(EdgeServiceClient<aidos_api::client::AuthChannel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    Ok(c.call(|ch| f(EdgeServiceClient::new(ch).max_decoding_message_size(64 << 20)))
        .await
        .map_err(|s| status_error(s, ""))?
        .into_inner())
}

/// A deterministic sample row in [0, 1) for the health check.
fn sample_row(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 + 11) % 101) as f32 / 101.0).collect()
}

async fn deploy(g: &Global, a: DeployArgs) -> anyhow::Result<()> {
    let mut selector = BTreeMap::new();
    for s in &a.selector {
        let (k, v) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--selector: `{s}` is not k=v"))?;
        selector.insert(k.trim().to_string(), v.trim().to_string());
    }
    let mut client = Client::new(&g.scheduler)?;
    let mut m = super::model::get_model(&mut client, &a.model).await?;
    if a.export_on_cluster && !m.artifacts.contains_key("onnx") {
        m = super::model::export_job(g, &mut client, &m, "none").await?.1;
    }
    let store = blob_store(g)?;
    let (id, bytes) = super::model::onnx_artifact(&mut client, &store, &m).await?;
    // The health-check sample: what this very artifact answers for a fixed input (run with tract, as devices do).
    let what = format!("{}:{}", m.name, m.version);
    let (input, output) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        let rt = aidos_runtime::load_onnx(RuntimeKind::Tract, &what, &bytes)?;
        let n = rt.metadata().inputs.first().map(|t| t.row_len()).unwrap_or(0);
        anyhow::ensure!(n > 0, "{what}: the model has no input with a known row size");
        let x = sample_row(n);
        let out = rt.instance()?.run(&[Tensor { shape: vec![1, n], data: x.clone() }])?;
        Ok((x, out.into_iter().next().map(|t| t.data).unwrap_or_default()))
    })
    .await??;
    let req = EdgeDeployRequest {
        name: a.name.clone().unwrap_or_default(),
        selector,
        model: m.name.clone(),
        version: m.version,
        artifact: id.to_string(),
        sample_input: input,
        sample_output: output,
        requested: a.model.clone(),
    };
    let d = edge(&mut client, |mut c| {
        let r = req.clone();
        async move { c.deploy(r).await }
    })
    .await?;
    if g.output == Output::Json {
        print_json(&json!({"name": d.name, "model": d.model, "version": d.version, "artifact": d.artifact,
                           "size": d.size, "selector": d.selector}));
    } else {
        let sel: Vec<String> = d.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "edge deployment {}: {}:{} ({} bytes, artifact {}) signed, for devices matching {}",
            d.name,
            d.model,
            d.version,
            d.size,
            &d.artifact[..12.min(d.artifact.len())],
            if sel.is_empty() { "anything".into() } else { sel.join(",") }
        );
    }
    Ok(())
}

async fn list(g: &Global) -> anyhow::Result<()> {
    let mut client = Client::new(&g.scheduler)?;
    let l = edge(&mut client, |mut c| async move { c.list_devices(ListDevicesRequest::default()).await }).await?;
    if g.output == Output::Json {
        let v: Vec<_> = l
            .devices
            .iter()
            .map(|d| {
                let s = d.status.clone().unwrap_or_default();
                json!({"name": d.name, "labels": d.labels, "hardware": d.hardware, "runtimes": d.runtimes,
                       "deployment": s.deployment, "model": s.model, "version": s.version, "artifact": s.artifact,
                       "runtime": s.runtime, "health": s.health, "last_error": s.last_error, "last_seen_ms": d.last_seen_ms,
                       "enrolled_at_ms": d.enrolled_at_ms, "telemetry_records": d.telemetry.len()})
            })
            .collect();
        print_json(&json!(v));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = l
        .devices
        .iter()
        .map(|d| {
            let s = d.status.clone().unwrap_or_default();
            let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                d.name.clone(),
                labels.join(","),
                if s.model.is_empty() { "-".into() } else { format!("{} ({}:{})", s.deployment, s.model, s.version) },
                if s.runtime.is_empty() { "-".into() } else { s.runtime.clone() },
                s.health.clone(),
                if d.last_seen_ms > 0 { age(d.last_seen_ms) } else { "-".into() },
                truncate(&s.last_error, 70),
            ]
        })
        .collect();
    print_table(&["DEVICE", "LABELS", "RUNNING", "RUNTIME", "HEALTH", "LAST SEEN", "LAST ERROR"], &rows);
    Ok(())
}

async fn telemetry(g: &Global, device: &str, last: usize) -> anyhow::Result<()> {
    let mut client = Client::new(&g.scheduler)?;
    let name = device.to_string();
    let l = edge(&mut client, |mut c| {
        let name = name.clone();
        async move { c.list_devices(ListDevicesRequest { name }).await }
    })
    .await?;
    let d = l.devices.into_iter().next().ok_or_else(|| anyhow::anyhow!("device {device} not found"))?;
    let recs = &d.telemetry[d.telemetry.len().saturating_sub(last)..];
    let total: u64 = d.telemetry.iter().map(|r| r.requests).sum();
    let errors: u64 = d.telemetry.iter().map(|r| r.errors).sum();
    if g.output == Output::Json {
        let v: Vec<_> = recs
            .iter()
            .map(|r| {
                json!({"start_ms": r.start_ms, "end_ms": r.end_ms, "model": r.model, "version": r.version,
                            "requests": r.requests, "errors": r.errors, "latency_buckets": r.latency_buckets,
                            "latency_sum_ms": r.latency_sum_ms})
            })
            .collect();
        print_json(&json!({"device": d.name, "requests": total, "errors": errors, "records": v}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|r| {
            let mean = if r.requests > 0 { r.latency_sum_ms / r.requests as f64 } else { 0.0 };
            vec![
                age(r.end_ms),
                format!("{}:{}", r.model, r.version),
                r.requests.to_string(),
                r.errors.to_string(),
                format!("{mean:.2}"),
                r.latency_buckets.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    print_table(
        &["ENDED", "MODEL", "REQUESTS", "ERRORS", "MEAN MS", "LATENCY BUCKETS (<=1 2 5 10 25 50 100 250 ms, more)"],
        &rows,
    );
    println!("{} requests, {} errors in {} intervals", total, errors, d.telemetry.len());
    Ok(())
}
