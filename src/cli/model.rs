//! `aidos model ...`: the registry (versions, aliases, lineage), pulling weights, and evaluation.

use std::path::PathBuf;

use aidos_api::{ListModelsRequest, ModelVersion, SetAliasRequest};
use aidos_blob::{BlobId, BlobStore};
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output, blob_store};
use super::client::{Client, status_error};
use super::render::{age, print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Registered model versions
    List {
        /// Only this model's versions
        name: Option<String>,
    },
    /// One version: metrics, lineage, aliases, artifacts
    Show {
        /// NAME (latest), NAME:VERSION or NAME@ALIAS
        model: String,
    },
    /// Point an alias (production, staging, ...) at a version: `aidos model alias mnist@production 3`
    Alias {
        /// NAME@ALIAS
        alias: String,
        /// The version it should name
        version: u32,
    },
    /// Write a version's weights and config to a directory
    Pull(PullArgs),
    /// Evaluate a version on a dataset split: accuracy, per-class precision/recall, confusion matrix
    Eval(EvalArgs),
    /// Export a version to ONNX (opset 17, dynamic batch, preprocessing included) and store it beside the version
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// NAME, NAME:VERSION or NAME@ALIAS
    pub model: String,
    /// Output format (only onnx)
    #[arg(long, env = "AIDOS_EXPORT_FORMAT", default_value = "onnx")]
    pub format: String,
    /// Where to write the file (optional with --on-cluster)
    #[arg(short = 'o', long = "output", env = "AIDOS_EXPORT_OUTPUT", required_unless_present = "on_cluster")]
    pub file: Option<PathBuf>,
    /// Run the export as an `export` job on a worker (stored and recorded on the version; `-o` then copies the
    /// result from the blob store)
    #[arg(long, env = "AIDOS_EXPORT_ON_CLUSTER", conflicts_with = "no_store")]
    pub on_cluster: bool,
    /// Weight quantization: none, or int8 (per-channel symmetric weights, ~4x smaller)
    #[arg(long, env = "AIDOS_EXPORT_QUANTIZE", default_value = "none")]
    pub quantize: String,
    /// Do not store the file in the blob store and record it as an artifact of the version
    #[arg(long, env = "AIDOS_EXPORT_NO_STORE")]
    pub no_store: bool,
}

pub use aidos_train::export_job::artifact_key;

/// Exports a registry version to ONNX bytes (preprocessing baked in, registry identity in the metadata).
/// `aidos model export --on-cluster`: an `export` job on a worker; waits for it, then copies the file if asked.
async fn export_on_cluster(g: &Global, client: &mut Client, a: ExportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.format == "onnx", "--format {}: only onnx is supported", a.format);
    let q: aidos_train::onnx::Quantize = a.quantize.parse()?;
    let m = get_model(client, &a.model).await?; // fail early, by name, when the model does not exist
    let (id, m) = export_job(g, client, &m, &a.quantize).await?;
    let key = artifact_key(q);
    let blob = m
        .artifacts
        .get(key)
        .ok_or_else(|| anyhow::anyhow!("job {id} succeeded but {}:{} has no `{key}` artifact", m.name, m.version))?;
    if let Some(file) = &a.file {
        let bytes = blob_store(g)?.get(&BlobId::parse(blob)?)?;
        std::fs::write(file, &*bytes).map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
    }
    if g.output == Output::Json {
        print_json(
            &json!({"model": format!("{}:{}", m.name, m.version), "job_id": id, "artifact": key, "blob": blob, "file": a.file}),
        );
    } else {
        println!("exported {}:{} on the cluster (job {id}): artifact `{key}` = {blob}", m.name, m.version);
    }
    Ok(())
}

/// Runs an `export` job for version `m` on a worker and waits for it; returns the job id and the version as it
/// is afterwards (with the artifact recorded).
pub async fn export_job(
    g: &Global,
    client: &mut Client,
    m: &ModelVersion,
    quantize: &str,
) -> anyhow::Result<(String, ModelVersion)> {
    let spec = aidos_api::JobSpec {
        name: format!("export-{}", m.name),
        kind: aidos_api::JobKind::Export as i32,
        resources: Some(aidos_api::Resources { cpu_millis: 1000, memory_bytes: 1 << 30, gpus: 0 }),
        replicas: 1,
        max_retries: 2,
        payload: Some(aidos_api::job_spec::Payload::Export(aidos_api::ExportSpec {
            model: format!("{}:{}", m.name, m.version),
            quantize: quantize.to_string(),
        })),
        ..Default::default()
    };
    aidos_api::spec::validate(&spec)?;
    let id = super::job::submit_spec(client, spec, super::job::new_request_id()).await?.job_id;
    eprintln!("export job {id} submitted");
    super::job::wait(&Global { output: Output::Table, ..g.clone() }, client, &id, None).await?;
    let m = get_model(client, &format!("{}:{}", m.name, m.version)).await?;
    Ok((id, m))
}

/// Stores `bytes` in the blob store and records them as artifact `key` of the model version.
pub async fn record_artifact(
    client: &mut Client,
    store: &dyn BlobStore,
    m: &ModelVersion,
    key: &str,
    bytes: &[u8],
) -> anyhow::Result<BlobId> {
    let id = store.put(bytes)?;
    client
        .models(|mut c| {
            let req = aidos_api::SetArtifactRequest {
                name: m.name.clone(),
                version: m.version,
                key: key.into(),
                blob: id.to_string(),
            };
            async move { c.set_artifact(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, ""))?;
    Ok(id)
}

/// The version's float ONNX artifact, exported and recorded now when it has none: (blob id, bytes).
pub async fn onnx_artifact(
    client: &mut Client,
    store: &std::sync::Arc<dyn BlobStore>,
    m: &ModelVersion,
) -> anyhow::Result<(BlobId, Vec<u8>)> {
    if let Some(id) = m.artifacts.get("onnx") {
        let id = BlobId::parse(id)?;
        let bytes = store.get(&id)?.to_vec();
        return Ok((id, bytes));
    }
    let (mv, st) = (m.clone(), store.clone());
    let bytes = tokio::task::spawn_blocking(move || export_onnx(&mv, &st, aidos_train::onnx::Quantize::None)).await??;
    let id = record_artifact(client, &**store, m, "onnx", &bytes).await?;
    Ok((id, bytes))
}

pub fn export_onnx(m: &ModelVersion, store: &dyn BlobStore, q: aidos_train::onnx::Quantize) -> anyhow::Result<Vec<u8>> {
    Ok(aidos_train::export_job::export_version(m, store, q)?)
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// NAME, NAME:VERSION or NAME@ALIAS
    pub model: String,
    /// Output directory (created); gets weights.bin and model.json
    #[arg(short = 'd', long, env = "AIDOS_MODEL_PULL_DIR", default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// NAME, NAME:VERSION or NAME@ALIAS
    pub model: String,
    /// NAME@vN
    #[arg(long, env = "AIDOS_EVAL_DATASET")]
    pub dataset: String,
    /// Which split of the dataset
    #[arg(long, env = "AIDOS_EVAL_SPLIT", default_value = "test")]
    pub split: String,
}

/// Parses `NAME`, `NAME:VERSION` or `NAME@ALIAS`.
pub async fn get_model(client: &mut Client, s: &str) -> anyhow::Result<ModelVersion> {
    let req = aidos_api::parse_model_ref(s).map_err(anyhow::Error::msg)?;
    client
        .models(|mut c| {
            let req = req.clone();
            async move { c.get(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, ""))
}

fn model_json(m: &ModelVersion) -> serde_json::Value {
    let l = m.lineage.clone().unwrap_or_default();
    json!({
        "name": m.name, "version": m.version, "aliases": m.aliases, "metrics": m.metrics,
        "weights_blob": m.weights_blob, "config": serde_json::from_str::<serde_json::Value>(&m.config).unwrap_or(json!(m.config)),
        "artifacts": m.artifacts, "created_at_ms": m.created_at_ms,
        "lineage": {"job_id": l.job_id, "run_id": l.run_id, "dataset": l.dataset, "dataset_hash": l.dataset_hash,
                    "params": l.params, "aidos_version": l.aidos_version, "sweep": l.sweep},
    })
}

pub use aidos_train::export_job::LoadedModel;

pub fn load(m: &ModelVersion, store: &dyn BlobStore) -> anyhow::Result<LoadedModel> {
    Ok(aidos_train::export_job::load_version(m, store)?)
}

pub async fn run(g: &Global, cmd: ModelCmd) -> anyhow::Result<()> {
    let mut client = Client::new(&g.scheduler)?;
    match cmd {
        ModelCmd::List { name } => {
            let name = name.unwrap_or_default();
            let models = client
                .models(|mut c| {
                    let name = name.clone();
                    async move { c.list(ListModelsRequest { name }).await.map(|r| r.into_inner().models) }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            if g.output == Output::Json {
                print_json(&json!({"models": models.iter().map(model_json).collect::<Vec<_>>()}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = models
                .iter()
                .map(|m| {
                    let l = m.lineage.clone().unwrap_or_default();
                    vec![
                        format!("{}:{}", m.name, m.version),
                        m.aliases.join(","),
                        m.metrics.get("test_accuracy").map(|a| format!("{:.4}", a)).unwrap_or_else(|| "-".into()),
                        l.dataset,
                        l.run_id,
                        age(m.created_at_ms),
                    ]
                })
                .collect();
            print_table(&["MODEL", "ALIASES", "TEST_ACC", "DATASET", "RUN", "AGE"], &rows);
        }
        ModelCmd::Show { model } => {
            let m = get_model(&mut client, &model).await?;
            if g.output == Output::Json {
                print_json(&model_json(&m));
                return Ok(());
            }
            let l = m.lineage.clone().unwrap_or_default();
            println!("model:      {}:{}", m.name, m.version);
            println!("aliases:    {}", if m.aliases.is_empty() { "-".into() } else { m.aliases.join(", ") });
            println!("created:    {} ago", age(m.created_at_ms));
            println!("weights:    {}", m.weights_blob);
            println!("config:     {}", m.config);
            println!(
                "lineage:    job {}  run {}  dataset {} ({})  aidos {}",
                l.job_id,
                l.run_id,
                l.dataset,
                l.dataset_hash.chars().take(12).collect::<String>(),
                l.aidos_version
            );
            if !l.sweep.is_empty() {
                println!("sweep:      {} (a trial of it trained this version)", l.sweep);
            }
            for (k, v) in &m.artifacts {
                println!("artifact:   {k} {v}");
            }
            println!("\nMETRICS");
            let rows: Vec<Vec<String>> = m.metrics.iter().map(|(k, v)| vec![k.clone(), format!("{v:.6}")]).collect();
            print_table(&["NAME", "VALUE"], &rows);
            if !l.params.is_empty() {
                println!("\nPARAMS");
                let rows: Vec<Vec<String>> = l.params.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
                print_table(&["NAME", "VALUE"], &rows);
            }
        }
        ModelCmd::Alias { alias, version } => {
            let (name, alias) = alias
                .split_once('@')
                .filter(|(n, a)| !n.is_empty() && !a.is_empty())
                .ok_or_else(|| anyhow::anyhow!("`{alias}`: expected NAME@ALIAS, e.g. mnist@production"))?;
            let (name, alias) = (name.to_string(), alias.to_string());
            let m = client
                .models(|mut c| {
                    let req = SetAliasRequest { name: name.clone(), alias: alias.clone(), version };
                    async move { c.set_alias(req).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            println!("{}@{} -> {}:{}", m.name, alias, m.name, m.version);
        }
        ModelCmd::Pull(a) => {
            let m = get_model(&mut client, &a.model).await?;
            let store = blob_store(g)?;
            let weights = store.get(&BlobId::parse(&m.weights_blob)?)?;
            std::fs::create_dir_all(&a.dir)?;
            std::fs::write(a.dir.join("weights.bin"), &*weights)?;
            std::fs::write(a.dir.join("model.json"), serde_json::to_vec_pretty(&model_json(&m))?)?;
            println!("pulled {}:{} into {} (weights.bin, model.json)", m.name, m.version, a.dir.display());
        }
        ModelCmd::Export(a) if a.on_cluster => export_on_cluster(g, &mut client, a).await?,
        ModelCmd::Export(a) => {
            anyhow::ensure!(a.format == "onnx", "--format {}: only onnx is supported", a.format);
            let q: aidos_train::onnx::Quantize = a.quantize.parse()?;
            let file = a.file.clone().expect("clap requires -o without --on-cluster");
            let m = get_model(&mut client, &a.model).await?;
            let store = blob_store(g)?;
            let (mv, st) = (m.clone(), store.clone());
            let bytes = tokio::task::spawn_blocking(move || export_onnx(&mv, &st, q)).await??;
            std::fs::write(&file, &bytes).map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
            let mut stored = String::new();
            if !a.no_store {
                let key = artifact_key(q);
                let id = record_artifact(&mut client, &store, &m, key, &bytes).await?;
                stored = format!("; recorded as artifact `{key}` of {}:{} ({id})", m.name, m.version);
            }
            if g.output == Output::Json {
                print_json(&json!({"model": format!("{}:{}", m.name, m.version), "file": file, "bytes": bytes.len(),
                                   "quantize": a.quantize, "stored": !a.no_store}));
            } else {
                println!(
                    "exported {}:{} to {} ({} bytes, ONNX opset {}){stored}",
                    m.name,
                    m.version,
                    file.display(),
                    bytes.len(),
                    aidos_train::onnx::OPSET
                );
            }
        }
        ModelCmd::Eval(a) => {
            let m = get_model(&mut client, &a.model).await?;
            let manifest = super::dataset::get_manifest(&mut client, &a.dataset).await?;
            let store = blob_store(g)?;
            let split = a.split.clone();
            let report = tokio::task::spawn_blocking(move || -> anyhow::Result<aidos_train::EvalReport> {
                let loaded = load(&m, &store)?;
                let data = aidos_datasets::load_split(&manifest, &split, &store)?;
                let shape: Vec<usize> = data.row_shape.iter().map(|d| *d as usize).collect();
                let mut features = data.features;
                let (mean, std) = (loaded.normalization.mean as f32, loaded.normalization.std as f32);
                features.iter_mut().for_each(|x| *x = (*x - mean) / std);
                let ds = aidos_train::Dataset::new(features, data.labels, shape)?;
                Ok(aidos_train::evaluate(&loaded.model, &ds)?)
            })
            .await??;
            if g.output == Output::Json {
                print_json(&json!({
                    "model": a.model, "dataset": a.dataset, "split": a.split, "accuracy": report.accuracy, "loss": report.loss,
                    "per_class": report.per_class.iter().map(|c| json!({"precision": c.precision, "recall": c.recall, "support": c.support})).collect::<Vec<_>>(),
                    "confusion": report.confusion,
                }));
                return Ok(());
            }
            println!(
                "{} on {} ({}): accuracy {:.4}  loss {:.4}\n",
                a.model, a.dataset, a.split, report.accuracy, report.loss
            );
            let rows: Vec<Vec<String>> = report
                .per_class
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    vec![
                        i.to_string(),
                        format!("{:.4}", c.precision),
                        format!("{:.4}", c.recall),
                        c.support.to_string(),
                    ]
                })
                .collect();
            print_table(&["CLASS", "PRECISION", "RECALL", "SUPPORT"], &rows);
            println!("\nCONFUSION (rows: true class, columns: predicted)");
            let mut headers = vec!["".to_string()];
            headers.extend((0..report.confusion.len()).map(|i| i.to_string()));
            let rows: Vec<Vec<String>> = report
                .confusion
                .iter()
                .enumerate()
                .map(|(i, r)| std::iter::once(i.to_string()).chain(r.iter().map(|v| v.to_string())).collect())
                .collect();
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            print_table(&h, &rows);
        }
    }
    Ok(())
}
