//! The task of an `export` job: what `aidos export-run` runs inside a task (started by a worker through the shim).
//! It exports the registry version named by the environment to ONNX ([`crate::onnx`]), stores the file in the blob
//! store and records it as an artifact of the version ([`run`]). The pieces are public for the CLI's local
//! `aidos model export` and for serving: reading a registry version back into a model ([`load_version`]) and
//! exporting it ([`export_version`]).
//!
//! Environment (on top of the SDK's task contract, see `aidos_sdk`):
//!
//! | variable                | meaning                                                   |
//! |-------------------------|-----------------------------------------------------------|
//! | `AIDOS_EXPORT_MODEL`    | `NAME`, `NAME:VERSION` or `NAME@ALIAS`                    |
//! | `AIDOS_EXPORT_QUANTIZE` | `none` (default, also when empty) or `int8`               |
//!
//! The scheduler is called through the one leader-following client (`aidos_api::client`): any node answers, a call
//! moves to the next address on UNAVAILABLE or a transport error, for up to [`RETRY_BUDGET`].

use std::time::{Duration, Instant};

use aidos_api::client::{AuthChannel, Client, ClientError, Config};
use aidos_api::contract::task_env;
use aidos_api::model_service_client::ModelServiceClient;
use aidos_sdk::{BlobError, BlobId, BlobStore, ModelVersion, SdkError, TaskEnv};
use tonic::{Code, Status};

use crate::builtin::Standardization;
use crate::config::ModelConfig;
use crate::error::TrainError;
use crate::eval::{TrainedModel, load_model};
use crate::onnx::{self, ExportOptions, Quantize};

/// How long one scheduler call keeps retrying across addresses before giving up.
pub const RETRY_BUDGET: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A model version (with its config and artifacts) may exceed tonic's 4 MiB default.
const MAX_MESSAGE: usize = 256 << 20;

/// Why an export failed. Every message names what is wrong (the variable, the model version, the blob).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{var} is not set")]
    MissingEnv { var: &'static str },
    /// The task contract (`AIDOS_*`) is incomplete or malformed.
    #[error("{0}")]
    Task(#[from] SdkError),
    /// `AIDOS_EXPORT_MODEL` is not a model reference.
    #[error("{0}")]
    ModelRef(String),
    #[error("{0}")]
    Client(#[from] ClientError),
    /// A scheduler call failed (not retryable, or the retry budget is spent).
    #[error("{}", status_message(.0))]
    Rpc(Status),
    #[error("opening the blob store at {dir}: {source}")]
    OpenStore { dir: String, source: BlobError },
    #[error("{0}")]
    Blob(#[from] BlobError),
    /// The registered config is not JSON.
    #[error("model {model} has an unreadable config: {source}")]
    UnreadableConfig { model: String, source: serde_json::Error },
    /// The registered config's `model` is not a model config.
    #[error("model {model}: config.model: {source}")]
    ModelConfig { model: String, source: serde_json::Error },
    /// Loading the weights or building the ONNX graph failed.
    #[error("{0}")]
    Train(#[from] TrainError),
    #[error("the export was cancelled or panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The message of a failed call: the scheduler's own for refusals, prefixed by the kind otherwise.
fn status_message(st: &Status) -> String {
    match st.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound => {
            st.message().to_string()
        }
        Code::Unavailable => format!("scheduler unavailable: {}", st.message()),
        code => format!("{}: {}", code.description(), st.message()),
    }
}

/// Artifact key of an export (`onnx`, `onnx-int8`).
pub fn artifact_key(q: Quantize) -> &'static str {
    match q {
        Quantize::None => "onnx",
        Quantize::Int8 => "onnx-int8",
    }
}

/// A registry version's preprocessing and network, as the trainer recorded them in the registered config.
pub struct LoadedModel {
    pub model: TrainedModel,
    /// As recorded (f64): export and serving apply it with the trainer's own arithmetic.
    pub normalization: Standardization,
}

/// Reads version `m` back: its config (missing normalization: mean 0, std 1) and its weights from `store`.
pub fn load_version(m: &ModelVersion, store: &dyn BlobStore) -> Result<LoadedModel, ExportError> {
    let model = || format!("{}:{}", m.name, m.version);
    let cfg: serde_json::Value =
        serde_json::from_str(&m.config).map_err(|source| ExportError::UnreadableConfig { model: model(), source })?;
    let model_cfg: ModelConfig = serde_json::from_value(cfg["model"].clone())
        .map_err(|source| ExportError::ModelConfig { model: model(), source })?;
    let norm = &cfg["normalization"];
    let normalization =
        Standardization { mean: norm["mean"].as_f64().unwrap_or(0.0), std: norm["std"].as_f64().unwrap_or(1.0) };
    let weights = store.get(&BlobId::parse(&m.weights_blob)?)?;
    let model = load_model(&model_cfg, &weights)?;
    Ok(LoadedModel { model, normalization })
}

/// Exports version `m` to ONNX bytes: preprocessing baked in, the registry identity in the metadata.
pub fn export_version(m: &ModelVersion, store: &dyn BlobStore, q: Quantize) -> Result<Vec<u8>, ExportError> {
    let loaded = load_version(m, store)?;
    let cfg: serde_json::Value = serde_json::from_str(&m.config).unwrap_or_default();
    let opts = ExportOptions {
        preprocess: Some(loaded.normalization),
        quantize: q,
        graph_name: m.name.clone(),
        metadata: vec![
            ("aidos.model".into(), format!("{}:{}", m.name, m.version)),
            ("aidos.weights_blob".into(), m.weights_blob.clone()),
            ("aidos.input_shape".into(), cfg["input_shape"].to_string()),
        ],
    };
    Ok(onnx::export(&loaded.model, &opts)?)
}

/// The `export` job's task: exports the version named by `AIDOS_EXPORT_MODEL`, stores the file and records it as
/// artifact [`artifact_key`] of the version; prints one line saying so. The export itself runs on a blocking thread.
pub async fn run() -> Result<(), ExportError> {
    let task = TaskEnv::from_env()?;
    let model =
        std::env::var(task_env::EXPORT_MODEL).map_err(|_| ExportError::MissingEnv { var: task_env::EXPORT_MODEL })?;
    let q: Quantize = std::env::var(task_env::EXPORT_QUANTIZE).unwrap_or_default().parse()?;
    // The client's default pauses between rounds (100 ms doubling to 1 s) and no per-try deadline.
    let cfg = Config {
        connect_timeout: CONNECT_TIMEOUT,
        budget: Some(RETRY_BUDGET),
        max_message: MAX_MESSAGE,
        credentials: task.credentials.clone(),
        ..Config::default()
    };
    let client = Client::new(&task.schedulers, cfg)?;
    let models = |ch: AuthChannel| ModelServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE);
    let req = aidos_api::parse_model_ref(&model).map_err(ExportError::ModelRef)?;
    let m = client
        .call("ModelService.Get", |ch| {
            let req = req.clone();
            async move { models(ch).get(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(ExportError::Rpc)?;
    let store = task
        .open_blob_store()
        .map_err(|source| ExportError::OpenStore { dir: task.blob_dir.display().to_string(), source })?;
    let (mv, st) = (m.clone(), store.clone());
    let t = Instant::now();
    let bytes = tokio::task::spawn_blocking(move || export_version(&mv, &*st, q)).await??;
    let key = artifact_key(q);
    let (st, len) = (store.clone(), bytes.len());
    let id = tokio::task::spawn_blocking(move || st.put(&bytes)).await??;
    let req = aidos_api::SetArtifactRequest {
        name: m.name.clone(),
        version: m.version,
        key: key.into(),
        blob: id.to_string(),
    };
    client
        .call("ModelService.SetArtifact", |ch| {
            let req = req.clone();
            async move { models(ch).set_artifact(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(ExportError::Rpc)?;
    println!(
        "exported {}:{} to ONNX (opset {}, {} bytes, {:.0} ms): artifact `{key}` = {id}",
        m.name,
        m.version,
        onnx::OPSET,
        len,
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
