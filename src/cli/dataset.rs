//! `aidos dataset ...`: push files as immutable, content-addressed versions; list, show, diff.

use std::path::PathBuf;

use aidos_api::{CommitDatasetRequest, DatasetManifest, GetDatasetRequest, ListDatasetsRequest};
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output, blob_store, parse_dataset_ref};
use super::client::{Client, status_error};
use super::render::{age, print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum DatasetCmd {
    /// Ingest a file or directory (IDX, CSV, NPY) as the next version of NAME
    Push(PushArgs),
    /// Dataset versions
    List(ListArgs),
    /// Rows, shapes, dtypes, label histogram, per-feature min/max/mean, duplicates and missing values
    Show {
        /// NAME@vN (NAME alone: the latest version)
        dataset: String,
    },
    /// Rows added and removed between two versions
    Diff {
        /// NAME@vN
        from: String,
        /// NAME@vN
        to: String,
    },
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Dataset name (A-Z a-z 0-9 . _ -)
    pub name: String,
    /// A file, or a directory holding an IDX image/label pair or X.npy/y.npy
    pub path: PathBuf,
    /// The labels file, when PATH is a features file of a pair (IDX or NPY)
    #[arg(long, env = "AIDOS_DATASET_LABELS")]
    pub labels: Option<PathBuf>,
    /// CSV: the label column (default `label`, else the last column)
    #[arg(long, env = "AIDOS_DATASET_LABEL_COLUMN")]
    pub label_column: Option<String>,
    /// Splits as row counts or fractions in stored order, e.g. `train=8000,test=2000` or `train=0.8,test=0.2`
    #[arg(long, env = "AIDOS_DATASET_SPLIT")]
    pub split: Option<String>,
    /// Rows per stored chunk
    #[arg(long, env = "AIDOS_DATASET_CHUNK_ROWS", default_value_t = 4096)]
    pub chunk_rows: u64,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this dataset's versions
    pub name: Option<String>,
}

pub async fn get_manifest(client: &mut Client, spec: &str) -> anyhow::Result<DatasetManifest> {
    let (name, version) = parse_dataset_ref(spec)?;
    client
        .datasets(|mut c| {
            let name = name.clone();
            async move { c.get(GetDatasetRequest { name, version }).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, ""))
}

fn shape(m: &DatasetManifest) -> String {
    m.row_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

fn splits(m: &DatasetManifest) -> String {
    m.splits.iter().map(|s| format!("{}={}", s.name, s.end - s.start)).collect::<Vec<_>>().join(",")
}

fn manifest_json(m: &DatasetManifest) -> serde_json::Value {
    let stats = m.stats.clone().unwrap_or_default();
    json!({
        "name": m.name, "version": m.version, "ref": format!("{}@v{}", m.name, m.version),
        "format": m.format, "rows": m.rows, "row_shape": m.row_shape, "dtype": m.dtype,
        "num_classes": m.num_classes, "content_hash": m.content_hash, "source": m.source,
        "created_at_ms": m.created_at_ms,
        "splits": m.splits.iter().map(|s| json!({"name": s.name, "start": s.start, "end": s.end})).collect::<Vec<_>>(),
        "chunks": m.feature_chunks.len(),
        "label_histogram": stats.label_histogram,
        "duplicate_rows": stats.duplicate_rows, "missing_values": stats.missing_values,
        "features": stats.features.iter().map(|f| json!({"min": f.min, "max": f.max, "mean": f.mean})).collect::<Vec<_>>(),
    })
}

pub async fn run(g: &Global, cmd: DatasetCmd) -> anyhow::Result<()> {
    let mut client = Client::new(&g.scheduler)?;
    match cmd {
        DatasetCmd::Push(a) => {
            let store = blob_store(g)?;
            let name = a.name.clone();
            let manifest = tokio::task::spawn_blocking(move || -> anyhow::Result<DatasetManifest> {
                let mut source = aidos_datasets::Source::detect(&a.path, a.labels.as_deref())?;
                if let (aidos_datasets::Source::Csv { label_column, .. }, Some(c)) = (&mut source, a.label_column) {
                    *label_column = Some(c);
                }
                let splits = match &a.split {
                    Some(s) => aidos_datasets::SplitSpec::parse(s)?,
                    None => Vec::new(),
                };
                let opts = aidos_datasets::IngestOptions { chunk_rows: a.chunk_rows as usize, splits };
                Ok(aidos_datasets::ingest(&a.name, &source, &opts, &store)?)
            })
            .await??;
            let committed = client
                .datasets(|mut c| {
                    let m = manifest.clone();
                    async move { c.commit(CommitDatasetRequest { manifest: Some(m) }).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, &format!("dataset {name}")))?;
            if g.output == Output::Json {
                print_json(&manifest_json(&committed));
            } else {
                println!(
                    "{}@v{}  {} rows  shape {}  {} classes  splits {}  hash {}",
                    committed.name,
                    committed.version,
                    committed.rows,
                    shape(&committed),
                    committed.num_classes,
                    splits(&committed),
                    &committed.content_hash[..committed.content_hash.len().min(16)]
                );
            }
        }
        DatasetCmd::List(a) => {
            let name = a.name.unwrap_or_default();
            let resp = client
                .datasets(|mut c| {
                    let name = name.clone();
                    async move { c.list(ListDatasetsRequest { name }).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            if g.output == Output::Json {
                print_json(&json!({"datasets": resp.datasets.iter().map(manifest_json).collect::<Vec<_>>()}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = resp
                .datasets
                .iter()
                .map(|m| {
                    vec![
                        format!("{}@v{}", m.name, m.version),
                        m.format.clone(),
                        m.rows.to_string(),
                        shape(m),
                        m.num_classes.to_string(),
                        splits(m),
                        m.content_hash.chars().take(12).collect(),
                        age(m.created_at_ms),
                    ]
                })
                .collect();
            print_table(&["DATASET", "FORMAT", "ROWS", "SHAPE", "CLASSES", "SPLITS", "HASH", "AGE"], &rows);
        }
        DatasetCmd::Show { dataset } => {
            let m = get_manifest(&mut client, &dataset).await?;
            if g.output == Output::Json {
                print_json(&manifest_json(&m));
                return Ok(());
            }
            for (k, v) in aidos_datasets::describe(&m) {
                println!("{:<16} {v}", format!("{k}:"));
            }
        }
        DatasetCmd::Diff { from, to } => {
            let a = get_manifest(&mut client, &from).await?;
            let b = get_manifest(&mut client, &to).await?;
            let store = blob_store(g)?;
            let d = tokio::task::spawn_blocking(move || aidos_datasets::diff(&a, &b, &store)).await??;
            if g.output == Output::Json {
                print_json(&json!({"from": from, "to": to, "rows_from": d.rows_a, "rows_to": d.rows_b,
                    "added": d.added, "removed": d.removed, "unchanged": d.unchanged}));
            } else {
                println!(
                    "{from} -> {to}: +{} rows added, -{} rows removed, {} unchanged ({} -> {} rows)",
                    d.added, d.removed, d.unchanged, d.rows_a, d.rows_b
                );
            }
        }
    }
    Ok(())
}
